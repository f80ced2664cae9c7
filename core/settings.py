"""The one Settings object: built by the CLI from env/flags and passed down, never a module global."""

from __future__ import annotations

from pathlib import Path

import ipaddress
import socket
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


METADATA_NAMES = ("metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal")
METADATA_V6 = ipaddress.ip_address("fd00:ec2::254")  # AWS IMDS over IPv6


def is_metadata_host(host: str) -> bool:
    """A cloud metadata service or a link-local address, however it is written: 169.254.169.254 is also
    2852039166, 0xa9fea9fe, 0251.0376.0251.0376, 169.254.43518 and [::ffff:169.254.169.254]."""
    h = host.strip("[]").rstrip(".").lower()
    if h in METADATA_NAMES:
        return True
    try:
        addr = ipaddress.ip_address(h)
    except ValueError:
        try:  # the forms inet_aton reads and browsers and libc resolvers accept (decimal, hex, octal, short)
            addr = ipaddress.IPv4Address(socket.inet_aton(h))
        except OSError:
            return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_link_local or addr == METADATA_V6


class GpuPrice(BaseModel):
    """USD per GPU-hour for one GPU type (late-2026 list prices; override per contract)."""

    on_demand: float
    spot: float


# cloud prices (infra/clusters; docs/clusters.md "Costs" gives the sources). USD per NODE-hour, Linux, list prices
# as of 2026-11 in us-east-1 (AWS) and us-central1 (GCP); spot figures are typical recent spot prices, which move
# daily. Keyed by the instance/machine type a node type's `s2v-price-key` label names. Correct any entry
# with S2V_NODE_PRICES='{"p5.4xlarge": {"on_demand": 6.88, "spot": 2.5}, ...}' (or one entry in a settings file).
class NodePrice(BaseModel):
    """USD per node-hour for one instance/machine type; None = not sold that way (GCP A3 High < 8 GPUs on-demand)."""

    on_demand: float | None
    spot: float | None


# RunPod: Secure Cloud (global networking needs it) per-GPU-hour list prices, late 2026 — H100 and A100 as in
# DESIGN.md; the RTX A4000 head at RunPod's serverless flex rate for its class ($0.00016/s), an upper bound
# for a pod (the console quotes the live rate). Keys are infra.clusters.runpod.api.price_key: runpod-<gpu>-x<GPUs>.
_RUNPOD_GPU_HOUR = {
    "h100-80gb-hbm3": NodePrice(on_demand=2.69, spot=1.35),
    "a100-sxm4-80gb": NodePrice(on_demand=1.59, spot=0.80),
    "a100-80gb-pcie": NodePrice(on_demand=1.59, spot=0.80),
    "rtx-a4000": NodePrice(on_demand=0.58, spot=0.58),
}


def _runpod_node_prices() -> dict[str, NodePrice]:
    return {f"runpod-{gpu}-x{n}": NodePrice(on_demand=round(p.on_demand * n, 4), spot=round(p.spot * n, 4))
            for gpu, p in _RUNPOD_GPU_HOUR.items() for n in (1, 2, 4, 8)}


def _default_node_prices() -> dict[str, NodePrice]:
    p = NodePrice
    return {
        # AWS heads (CPU, on-demand) and GPU workers
        "m6i.xlarge": p(on_demand=0.192, spot=0.08),
        "m6i.2xlarge": p(on_demand=0.384, spot=0.16),
        "p5.4xlarge": p(on_demand=6.88, spot=2.75),        # 1× H100 80 GB
        "p5.48xlarge": p(on_demand=55.04, spot=22.0),      # 8× H100 80 GB
        "p4de.24xlarge": p(on_demand=27.45, spot=11.0),    # 8× A100 80 GB
        "g6e.xlarge": p(on_demand=1.861, spot=0.75),       # 1× L40S 48 GB (needs offload for the 14B model)
        "g6e.12xlarge": p(on_demand=10.493, spot=4.2),     # 4× L40S
        "g6e.48xlarge": p(on_demand=30.131, spot=12.0),    # 8× L40S
        # GCP heads and GPU workers (A3 High with 1/2/4 GPUs is sold as Spot only)
        "n2-standard-4": p(on_demand=0.194, spot=0.047),
        "n2-standard-8": p(on_demand=0.389, spot=0.094),
        "a3-highgpu-1g": p(on_demand=None, spot=3.2),      # 1× H100 80 GB
        "a3-highgpu-2g": p(on_demand=None, spot=6.4),
        "a3-highgpu-4g": p(on_demand=None, spot=12.8),
        "a3-highgpu-8g": p(on_demand=88.25, spot=25.6),    # 8× H100 80 GB
        "a2-ultragpu-1g": p(on_demand=5.07, spot=2.03),    # 1× A100 80 GB
        "a2-ultragpu-2g": p(on_demand=10.14, spot=4.06),
        "a2-ultragpu-4g": p(on_demand=20.28, spot=8.11),
        "a2-ultragpu-8g": p(on_demand=40.55, spot=16.22),
        # RunPod pods: keys are infra.clusters.runpod.api.price_key (runpod-<gpu>-x<GPUs>), see _RUNPOD_GPU_HOUR above
        **_runpod_node_prices(),
    }


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
    cost_clock: str = Field("auto", pattern="^(auto|ray)$", description="auto: a cluster run bills each node by "
                            "the cloud's own clock (launch to end) when the head can read it; ray: by Ray's node "
                            "table (join to leave) only.")
    cost_clock_poll_s: float = Field(60.0, gt=0, description="How often the ledger reads the cloud's clock.")

    # cost model
    seconds_per_clip: dict[str, float] = Field(
        default_factory=lambda: {"draft": 0.6, "wan-s2v": 360.0, "faults": 0.6},
        description="Expected GPU-seconds per clip, per backend, until clips were measured (orchestrator/estimates.py); "
        "wan-s2v: 40 steps at 832×480 on an H100, from a FLOP count (docs/benchmarks.md).",
    )
    gpu_type: str = "local"
    spot: bool = False
    prices: dict[str, GpuPrice] = Field(default_factory=_default_prices)
    price_per_gpu_hour: float | None = Field(None, description="Overrides the price table when set.")
    budget_usd: float | None = None
    # cloud prices: USD per node-hour per node type, matched to a node's Ray labels `s2v-price-key` (instance /
    # machine type) and `s2v-market` (spot | on-demand); a cluster run's cost is its node-hours at these prices
    node_prices: dict[str, NodePrice] = Field(default_factory=_default_node_prices,
                                              description="USD per node-hour by instance/machine type (cloud prices).")

    # encoding (identical for every clip so stitching is a stream copy)
    crf: int = Field(18, ge=0, le=51)
    preset: str = "veryfast"
    audio_bitrate: str = "192k"
    max_duration_s: float = Field(4 * 3600.0, description="Refuse audio longer than this.")

    # quality gates
    max_frozen_s: float = Field(0.0, ge=0, description="Fail a job with a frozen stretch longer than this (0 = off).")
    max_black_s: float = Field(0.0, ge=0, description="Fail a job with a black stretch longer than this (0 = off).")

    # model stack (wan-s2v): weights folder, dtype (None = bf16 on GPU, fp32 on CPU), diffsynth offload.
    # docs/models.md "Trading speed for memory" says what each offload mode maps to in diffsynth's vram_config.
    model_dir: str | None = None
    wan_dtype: str | None = Field(None, pattern="^(bf16|bfloat16|fp16|float16|fp32|float32)$",
                                  description="Model dtype: bf16|bfloat16, fp16|float16, fp32|float32.")
    wan_offload: str | None = Field(None, pattern="^(cpu|disk)$", description="cpu: idle models wait in RAM; disk: "
                                    "DiT layers read from its safetensors when they run. Unset: all on the GPU.")
    wan_vram_limit: float | None = Field(None, ge=0, description="GiB of GPU memory diffsynth may fill before it "
                                         "streams layers in per use (needs wan_offload).")

    # checkpoints (orchestrator/checkpoints.py, orchestrator/gc.py): a chain keeps only its newest tail, and a job's
    # checkpoints (clip videos, tails, markers, pre-encoded audio) go once its outputs are published
    keep_checkpoints: bool = Field(False, description="Keep a job's checkpoints after it is published (re-stitch "
                                   "without re-rendering); `s2v gc` still removes them once abandoned.")

    # planning: long silences, image and memory limits (orchestrator/plan/); learned clip times
    # (orchestrator/estimates.py) replace seconds_per_clip per backend, GPU type, size and steps once measured
    long_silence_s: float = Field(10.0, gt=0, description="`plan` reports stretches without speech this long or "
                                  "longer: each costs a clip per 5 s of a silent presenter.")
    max_image_pixels: int = Field(89_478_485, ge=4096, description="Refuse presenter images with more pixels: "
                                  "Pillow's own default, ≈ 89 MP (a 20000×20000 PNG would take 1.2 GB to decode; "
                                  "the model uses ~0.4 MP). Pillow refuses over twice that whatever this says.")
    plan_memory_mb: int = Field(2048, ge=64, description="Memory the planner may hold in decodes at once; jobs "
                                "wait for room beyond it (audio is streamed; images are decoded whole).")

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

    # publishing safety (infra/storage, orchestrator/publish.py, orchestrator/leases.py)
    storage_file_mode: str = Field("umask", pattern=r"^(umask|(0o|0)?[0-7]{3})$",
                                   description="Permission bits of files s2v writes locally: 'umask' (0644 under "
                                               "umask 022, as any program would create them) or octal, e.g. 0640.")
    allowed_output_roots: list[str] | None = Field(
        None, description="When set, outputs must lie under one of these paths/URI prefixes (shared deployments); "
                          "env: a JSON list, e.g. S2V_ALLOWED_OUTPUT_ROOTS='[\"/srv/videos\", \"s3://acme/out\"]'.")
    staging_roots: list[str] | None = Field(
        None, description="Local folders whose files `render --cluster` may upload besides the manifest's own "
                          "folder; env: a JSON list, e.g. S2V_STAGING_ROOTS='[\"/srv/media\"]'.")
    lease_ttl_s: float = Field(120.0, gt=0, description="A run's lease on a job key lasts this long unless renewed "
                                                       "(every third of it); a crashed holder's lease expires.")
    lease_wait_s: float = Field(0.0, ge=0, description="How long a run waits for jobs another run is rendering "
                                                      "before skipping them (0 = skip at once).")

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
    # cluster launcher (infra/clusters): where `s2v cluster up` keeps each cluster's code bundle and state
    clusters_dir: Path = Field(Path.home() / ".s2v" / "clusters", description="Per-cluster bundle (dist/) and "
                               "state (state.json: the zone `up` chose), one folder per cluster_name.")
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

    # preemption watcher (issue 10 item 8: infra/preemption/)
    preemption_clear_grace_s: float = Field(120.0, ge=0, description="An interruption clears once the node is "
                                            "still alive this long past its deadline.")
    preemption_warning_expiry_s: float = Field(600.0, gt=0, description="A rebalance recommendation stops holding "
                                               "new work off its node this long after AWS issued it.")
    sigterm_flag_dir: str = Field("~/.local/state/s2v-batch", description="Where a pod entrypoint's SIGTERM trap "
                                  "writes its flag (a 0700 dir of the renderer's user; '~' is the node's home); "
                                  "'{node_id}' expands to the Ray node id (per-node notices in local tests).")

    # webhook (orchestrator/webhook.py): a signed POST per job published/failed and per run finished. repr=False
    # keeps both out of logs and tracebacks: the secret signs, and webhook URLs often embed a token themselves.
    webhook_url: str | None = Field(None, repr=False, description="http(s) URL to POST run events to; None = off.")
    webhook_secret: str | None = Field(None, repr=False, description="HMAC-SHA256 key for X-S2V-Signature.")

    # delivery: captions + renditions, the post step of every job (issue 13: pipeline/captions.py, asr.py,
    # renditions.py; orchestrator/post.py). None of these change a job key; they change rendition keys.
    asr_model_dir: str | None = Field(None, description="Whisper folder (transformers layout) for `captions: auto`.")
    asr_cpus: float = Field(1.0, gt=0, description="CPUs of the speech-recognition Ray task (it never takes a GPU).")
    caption_font: str = Field("DejaVu Sans", description="Font family of burned-in captions (fontconfig name).")
    caption_fonts_dir: str | None = Field(None, description="Extra folder of font files for burn-in; None = system.")
    rendition_preset: str = Field("medium", description="x264 preset of renditions and burned masters.",
                                  pattern="^(ultrafast|superfast|veryfast|faster|fast|medium|slow|slower|veryslow)$")
    rendition_crf: int = Field(21, ge=0, le=51, description="CRF of renditions that give neither crf nor bitrate.")
    rendition_audio_bitrate: str = Field("128k", description="AAC bitrate of renditions (48 kHz stereo).")
    hls_segment_s: float = Field(6.0, ge=1, le=30, description="HLS segment length; every variant cuts there.")

    @field_validator("node_prices", mode="after")
    @classmethod
    def _over_default_prices(cls, v: dict[str, NodePrice]) -> dict[str, NodePrice]:
        # S2V_NODE_PRICES='{"runpod-h100-80gb-hbm3-x1": {...}}' corrects one entry; the rest of the table stays.
        return {**_default_node_prices(), **v}

    @field_validator("allowed_output_roots")
    @classmethod
    def _roots(cls, v: list[str] | None) -> list[str] | None:
        """Absolute paths, file:// or s3:// / gs:// URIs with a bucket; a root that cannot match is a typo."""
        for root in v or []:
            u = urlsplit(root)
            ok = (u.scheme in ("s3", "gs") and u.netloc) or (u.scheme == "file" and u.path.startswith("/")) or (
                "://" not in root and Path(root).expanduser().is_absolute())
            if not ok or ".." in root.replace("\\", "/").split("/"):
                raise ValueError(f"{root!r} is not an absolute path, file://, s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX]")
        return v or None

    @field_validator("staging_roots")
    @classmethod
    def _staging_roots(cls, v: list[str] | None) -> list[str] | None:
        for root in v or []:
            if "://" in root or not Path(root).expanduser().is_absolute():
                raise ValueError(f"{root!r} is not an absolute local folder")
        return v or None

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, v: str | None) -> str | None:
        """Checked when settings load, not after planning; the message never repeats the URL (it may hold a token)."""
        if v is None or not v.strip():
            return None
        u = urlsplit(v.strip())
        if u.scheme.lower() not in ("http", "https"):
            raise ValueError(f"must be an http:// or https:// URL (got scheme {u.scheme or 'none'!r})")
        if not u.hostname:
            raise ValueError("has no host; expected http(s)://HOST[:PORT]/PATH")
        if is_metadata_host(u.hostname):
            raise ValueError("points at a cloud metadata / link-local address; events never go there")
        return v.strip()

    # input hardening (issue 12: orchestrator/manifest*.py, orchestrator/runner.py)
    manifest_max_mb: float = Field(64.0, gt=0, description="Refuse manifests bigger than this (MB), before parsing.")
    interrupt_webhook_wait_s: float = Field(5.0, ge=0, description="After Ctrl-C, how long the run waits to deliver "
                                            "its run.finished webhook before it exits.")

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
        if p is None or market not in ("spot", "on-demand"):
            return None
        return p.spot if market == "spot" else p.on_demand

    def expected_clip_s(self, backend: str) -> float:
        return self.seconds_per_clip.get(backend, 60.0)
