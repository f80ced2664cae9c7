"""The one Settings object: built by the CLI from env/flags and passed down, never a module global."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NodePrice(BaseModel):
    """USD per node-hour for one node type (instance / machine type), on-demand and spot."""

    on_demand: float = Field(ge=0)
    spot: float = Field(ge=0)


class GpuPrice(BaseModel):
    """USD per GPU-hour for one GPU type (late-2026 list prices; override per contract)."""

    on_demand: float
    spot: float


def _default_prices() -> dict[str, GpuPrice]:
    return {
        "h100-aws": GpuPrice(on_demand=6.88, spot=2.75),
        "h100-runpod": GpuPrice(on_demand=2.69, spot=1.35),
        "a100-80g-runpod": GpuPrice(on_demand=1.59, spot=0.80),
        "local": GpuPrice(on_demand=0.0, spot=0.0),
    }


class Settings(BaseSettings):
    """Everything tunable; env vars are S2V_<NAME> (nested with __), CLI flags override."""

    model_config = SettingsConfigDict(env_prefix="S2V_", env_nested_delimiter="__", extra="ignore")

    # where things go
    work: str = Field(".s2v-work", description="Work area URI for checkpoints and run state.")
    cache_dir: Path = Field(Path.home() / ".cache" / "s2v-batch", description="Local input cache.")

    # cluster / scheduling
    address: str | None = Field(None, description="Ray address to join; None starts a local Ray.")
    gpus: int | None = Field(None, ge=1, description="Embedded local Ray: its logical GPUs (None = 1). Joining a "
                             "cluster: the most GPUs the run asks the autoscaler for (None = the cluster config's "
                             "maximum where the config is readable, else the GPUs the cluster has).")
    gpus_per_actor: int = Field(1, ge=1)
    clips_in_flight_per_actor: int = Field(2, ge=1, le=4, description="Queued clip calls per actor; 2 hides dispatch gaps.")
    clip_timeout_factor: float = Field(10.0, gt=1, description="Watchdog: kill a clip after factor × expected seconds.")
    clip_timeout_min_s: float = Field(120.0, gt=0)
    max_attempts: int = Field(3, ge=1, description="Application-error attempts per job before it fails.")
    blocklist_after_jobs: int = Field(3, ge=2, description="Take an actor out of rotation once clips of this many "
                                      "different jobs failed on it (render-farm style blocklist).")
    stitch_cpus: float = Field(1.0, gt=0)
    no_worker_timeout_s: float = Field(1800.0, gt=0, description="Fail what is left when no actor is alive this long.")

    # render runtime (orchestrator/pool.py, worker.py, costs.py)
    cuda: str = Field("auto", pattern="^(auto|require|off)$",
                      description="Backends that need CUDA (wan-s2v): 'require' fails an actor whose GPU has no working "
                      "CUDA, with the reason; 'off' renders on CPU; 'auto' = require when joining a cluster (address "
                      "set), else CUDA when it works and CPU otherwise (logical GPUs in tests and demos).")
    spot_wait_s: float = Field(600.0, gt=0, description="Wait this long for spot capacity the run asked for; then new "
                               "actors ask for the on-demand node type (reported).")
    cost_poll_s: float = Field(10.0, gt=0, description="How often the node-hour ledger reads the node table.")

    # cost model
    seconds_per_clip: dict[str, float] = Field(
        default_factory=lambda: {"draft": 0.6, "wan-s2v": 240.0, "faults": 0.6},
        description="Expected GPU-seconds per clip, per backend (for plan estimates and the watchdog).",
    )
    gpu_type: str = "local"
    spot: bool = False
    prices: dict[str, GpuPrice] = Field(default_factory=_default_prices)
    price_per_gpu_hour: float | None = Field(None, description="Overrides the price table when set.")
    budget_usd: float | None = None

    # cloud prices: USD per node-hour per node type, matched to a node's Ray labels `s2v-price-key` (instance /
    # machine type) and `s2v-market` (spot | on-demand); reports price clusters from node-hours with them.
    node_prices: dict[str, NodePrice] = Field(default_factory=dict)

    # encoding (identical for every clip so stitching is a stream copy)
    crf: int = Field(18, ge=0, le=51)
    preset: str = "veryfast"
    audio_bitrate: str = "192k"
    max_duration_s: float = Field(4 * 3600.0, description="Refuse audio longer than this.")

    # quality gates
    max_frozen_s: float = Field(0.0, ge=0, description="Fail a job with a frozen stretch longer than this (0 = off).")
    max_black_s: float = Field(0.0, ge=0, description="Fail a job with a black stretch longer than this (0 = off).")

    # model stack (wan-s2v): weights folder, dtype (None = bf16 on GPU, fp32 on CPU), diffsynth offload
    model_dir: str | None = None
    wan_dtype: str | None = Field(None, pattern="^(bf16|bfloat16|fp16|float16|fp32|float32)$")
    wan_offload: str | None = Field(None, pattern="^(cpu|disk)$", description="Offload idle weights (CUDA only).")
    wan_vram_limit: float | None = Field(None, gt=0, description="GiB of GPU memory diffsynth may keep resident.")

    # fault drills (the `faults` backend): see pipeline/backends/drills/faults.py
    faults: list[dict] = Field(default_factory=list)
    faults_dir: str | None = None

    # object storage (S3 / GCS), owned by infra/storage. Credentials are never settings: each cloud's standard
    # chain (env, profile, instance role / ADC) supplies them, so they never land in logs or run state.
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (R2, MinIO, SeaweedFS); None = AWS.")
    s3_region: str | None = Field(None, description="Region for S3 signing; None = the credential chain's default.")
    s3_addressing_style: str = Field("auto", pattern="^(auto|path|virtual)$", description="path for most S3-compatibles.")
    s3_profile: str | None = Field(None, description="AWS profile name; None = AWS_PROFILE / default chain.")
    s3_multipart_threshold_mb: int = Field(64, ge=5, description="Files above this go up/down in parts.")
    s3_multipart_chunk_mb: int = Field(16, ge=5, description="Part size; S3 needs ≥ 5 MiB per part.")
    s3_max_concurrency: int = Field(8, ge=1, description="Parallel parts per transfer.")
    gcs_project: str | None = Field(None, description="GCP project for the client; None = from ADC.")
    gcs_chunk_mb: int = Field(16, ge=1, description="Resumable upload chunk (rounded to 256 KiB).")
    gcs_credentials_file: str | None = Field(None, description="Service-account JSON; None = ADC.")
    storage_connect_timeout_s: float = Field(10.0, gt=0)
    storage_read_timeout_s: float = Field(120.0, gt=0)

    # clouds + preemption (issue 6: infra/clusters, infra/preemption.py, infra/runpod_provider.py)
    cloud_provider: str = Field("aws", description="aws | gcp | runpod: what `s2v cluster init` writes.")
    cloud_region: str = Field("us-west-2", description="AWS/GCP region; RunPod data center id or 'any'.")
    cloud_zone: str | None = Field(None, description="AWS availability zone(s) or GCP zone; None picks one.")
    cloud_gpu_type: str | None = Field(None, description="Instance/machine/GPU type id; None = provider default.")
    cloud_gpu_count: int = Field(1, ge=1, le=8, description="GPUs per worker node.")
    cloud_max_workers: int = Field(4, ge=0, description="Most GPU worker nodes the autoscaler may launch.")
    cloud_image: str | None = Field(None, description="VM image / container image; None = provider default.")
    cloud_project: str | None = Field(None, description="GCP project id.")
    cluster_name: str = "s2v"
    # "none" by default: probing cloud metadata endpoints from a laptop or CI would send traffic off the machine;
    # cluster runs submitted with `s2v render --cluster` set it to "auto" for the driver and its actors.
    preemption_sources: str = Field("none", description="Comma list of aws,gcp,sigterm; 'auto' detects; 'none' off.")
    preemption_poll_s: float = Field(1.0, gt=0)
    fallback_after_preemptions: int = Field(3, ge=1, description="N preemptions in M minutes → on-demand type.")
    fallback_window_min: float = Field(30.0, gt=0)
    fallback_node_type: str = Field("gpu_ondemand", description="Ray node type that takes work after fallback.")
    aws_imds_url: str = Field("http://169.254.169.254", description="IMDS base URL (tests point it at loopback).")
    gcp_metadata_url: str = Field("http://metadata.google.internal", description="GCP metadata base URL.")
    sigterm_notice_s: float = Field(5.0, gt=0, description="RunPod's SIGTERM→SIGKILL window.")
    sigterm_flag_file: str = Field("/tmp/s2v-sigterm", description="File a pod entrypoint touches on SIGTERM; "
                                   "'{node_id}' expands to the Ray node id (per-node notices in local tests).")

    # webhook (orchestrator/webhook.py): a signed POST per job published/failed and per run finished. repr=False
    # keeps both out of logs and tracebacks: the secret signs, and webhook URLs often embed a token themselves.
    webhook_url: str | None = Field(None, repr=False, description="http(s) URL to POST run events to; None = off.")
    webhook_secret: str | None = Field(None, repr=False, description="HMAC-SHA256 key for X-S2V-Signature.")

    def price(self) -> float:
        """USD per GPU-hour used for estimates and reports."""
        if self.price_per_gpu_hour is not None:
            return self.price_per_gpu_hour
        p = self.prices.get(self.gpu_type)
        if p is None:
            return 0.0
        return p.spot if self.spot else p.on_demand

    def node_price(self, key: str | None, market: str | None) -> float | None:
        """USD per node-hour of a node type in a market ('spot' or 'on-demand'); None when unknown."""
        p = self.node_prices.get(key or "")
        if p is None or market not in ("spot", "on-demand", "on_demand", "ondemand"):
            return None
        return p.spot if market == "spot" else p.on_demand

    def expected_clip_s(self, backend: str) -> float:
        return self.seconds_per_clip.get(backend, 60.0)
