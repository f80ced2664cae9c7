"""Which settings travel to a cluster's driver, each decided by name: the ones that shape the render mean the
same everywhere and go along; the ones that describe this machine (its paths, its Ray, its cloud profile, the
metadata services its tests fake) or that the cluster's own config decides (work area, weights, notices, prices)
stay here. A setting added to core/settings.py must be placed in one list (tests/test_submit.py checks it)."""

from __future__ import annotations

TRAVELS = frozenset({
    # the render and its policy
    "gpus_per_actor", "clips_in_flight_per_actor", "clip_timeout_factor", "clip_timeout_min_s", "max_attempts",
    "blocklist_after_jobs", "stitch_cpus", "no_worker_timeout_s", "cuda", "spot_wait_s", "cost_poll_s", "cost_clock",
    "cost_clock_poll_s",
    "seconds_per_clip", "gpu_type", "spot", "prices", "price_per_gpu_hour", "keep_checkpoints", "lease_ttl_s",
    "lease_wait_s", "fallback_after_preemptions", "fallback_window_min", "fallback_node_type", "faults",
    # what the output looks like, and the checks on the inputs
    "crf", "preset", "audio_bitrate", "max_duration_s", "max_frozen_s", "max_black_s", "wan_dtype", "wan_offload",
    "wan_vram_limit", "long_silence_s", "max_image_pixels", "plan_memory_mb", "manifest_max_mb", "asr_cpus",
    "caption_font", "rendition_preset", "rendition_crf", "rendition_audio_bitrate", "hls_segment_s",
    "interrupt_webhook_wait_s", "allowed_output_roots", "storage_file_mode",
    # how the object store is spoken to (the store is the same one from everywhere)
    "s3_endpoint_url", "s3_region", "s3_addressing_style", "s3_multipart_threshold_mb", "s3_multipart_chunk_mb",
    "s3_max_concurrency", "gcs_project", "gcs_chunk_mb", "storage_connect_timeout_s", "storage_read_timeout_s",
})

STAYS: dict[str, str] = {
    "work": "the run's work area is --work or the cluster config's metadata.s2v.work",
    "address": "the driver joins the cluster it runs on",
    "gpus": "sent as --gpus", "budget_usd": "sent as --budget",
    "cache_dir": "a folder of this machine", "faults_dir": "a folder of this machine",
    "asr_model_dir": "a folder of this machine", "caption_fonts_dir": "a folder of this machine",
    "sigterm_flag_dir": "a folder of this machine",
    "model_dir": "the cluster's weights are its config's metadata.s2v.model_dir",
    "s3_profile": "this machine's AWS profile: nodes use their own credentials",
    "gcs_credentials_file": "this machine's key file: nodes use their own credentials",
    "preemption_sources": "the cluster config names its notice source",
    "preemption_poll_s": "the nodes watch their notices at their own pace",
    "preemption_clear_grace_s": "the nodes judge their own notices",
    "preemption_warning_expiry_s": "the nodes judge their own notices",
    "sigterm_notice_s": "the nodes judge their own notices",
    "aws_imds_url": "each node asks its own metadata service",
    "gcp_metadata_url": "each node asks its own metadata service",
    "node_prices": "the cluster config's prices (metadata.s2v.prices) over the table",
    "cloud_provider": "cluster set-up (`s2v cluster init`)", "cloud_region": "cluster set-up",
    "cloud_zone": "cluster set-up", "cloud_gpu_type": "cluster set-up", "cloud_gpu_count": "cluster set-up",
    "cloud_max_workers": "cluster set-up", "cloud_image": "cluster set-up", "cloud_project": "cluster set-up",
    "cluster_name": "cluster set-up", "clusters_dir": "a folder of this machine",
    "staging_roots": "folders of this machine that `render --cluster` uploads from",
}
# secrets (webhook_url, webhook_secret, …) travel too, as 0600 files, never in the job's environment: forward.py
