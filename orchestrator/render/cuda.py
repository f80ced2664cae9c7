"""The CUDA policy of a render actor: whether a backend must have a working GPU here, and why it has none."""

from __future__ import annotations

import os

from core.errors import CudaUnavailable
from core.settings import Settings


def cuda_policy(settings: Settings, needs_cuda: bool) -> str:
    """'require', 'prefer' or 'off' for one backend: auto requires CUDA of a backend that needs it when the run
    joined a cluster (a billed GPU), and prefers it otherwise (logical GPUs on CPU machines: tests, demos)."""
    mode = settings.cuda
    if mode == "off":
        return "off"
    if not needs_cuda:
        return "prefer"
    if mode == "auto":
        return "require" if settings.address else "prefer"
    return mode


def cuda_problem() -> str | None:
    """Why this actor cannot use CUDA, in the words of what failed; None when it works."""
    import importlib.util

    import ray

    if not ray.get_gpu_ids():
        return "Ray granted this actor no GPU"
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return "CUDA_VISIBLE_DEVICES is empty"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    try:
        torch.cuda.init()  # raises with the driver's own reason (no driver, too old, no device)
    except Exception as e:  # noqa: BLE001 - the reason is the message
        return f"torch could not initialise CUDA: {e}"
    if torch.cuda.device_count() == 0:
        return "torch sees no CUDA device"
    return None


def pick_device(settings, needs_cuda: bool = False, backend: str = "") -> str:
    """'cuda:0' when this actor's GPU works; 'cpu' where the policy allows it; else CudaUnavailable, loudly."""
    policy = cuda_policy(settings, needs_cuda)
    if policy == "off":
        return "cpu"
    problem = cuda_problem()
    if problem is None:
        return "cuda:0"
    if policy == "require":
        import ray

        raise CudaUnavailable(
            f"{backend or 'this backend'} needs a working CUDA GPU and this actor has none: {problem} "
            f"(node {ray.get_runtime_context().get_node_id()}, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Fix the node's driver/torch build, or set cuda=off to "
            "render on CPU on purpose.")
    return "cpu"
