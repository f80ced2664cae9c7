"""Import shims for the model stack on CPU-only torch, kept in one place and applied only when needed."""

from __future__ import annotations

import sys
import threading

_LOCK = threading.Lock()
_DONE = False

# torchvision's Python side registers fake (meta) kernels for these two ops at import time. Its compiled
# extension defines them, but the PyPI wheel's extension is CUDA-linked and does not load on a CPU-only torch
# build, so the registration fails with "operator torchvision::nms does not exist" and `import torchvision`
# (pulled in by transformers and diffsynth) fails. Defining the bare schemas lets the import finish; the ops
# themselves are never called by the Wan S2V path.
_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _missing_op_error(exc: BaseException) -> bool:
    text = str(exc)
    return "torchvision::" in text and "does not exist" in text


def _forget_torchvision() -> None:
    # A failed import leaves half-initialised modules behind; a retry must start clean.
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _define_missing_schemas() -> list[str]:
    import torch

    defined = []
    for qualname, schema in _SCHEMAS.items():
        ns, _, op = qualname.partition("::")
        if hasattr(getattr(torch.ops, ns), op):
            continue
        torch.library.define(qualname, schema)
        defined.append(qualname)
    return defined


def ensure_torchvision() -> list[str]:
    """Make `import torchvision` work; returns the op schemas it had to define (empty when none were needed)."""
    global _DONE
    with _LOCK:
        if _DONE:
            return []
        defined: list[str] = []
        try:
            import torchvision  # noqa: F401
        except RuntimeError as exc:
            if not _missing_op_error(exc):
                raise
            _forget_torchvision()
            defined = _define_missing_schemas()
            import torchvision  # noqa: F401,F811
        except ImportError:
            # No torchvision at all: diffsynth/transformers import it lazily or not at all; nothing to patch.
            pass
        _DONE = True
        return defined


def ensure_cpu_empty_cache() -> bool:
    """Give `torch.cpu` a no-op `empty_cache` when it has none; returns True when it had to.

    diffsynth's VRAM management calls `getattr(torch, device_type).empty_cache()` whenever it moves models, and
    torch has that function for CUDA, MPS, XPU and NPU but not for the CPU (there is no caching allocator to empty).
    Without it an offloaded pipeline cannot run on a CPU at all, so its disk-offload path could not be tested there."""
    import torch

    if hasattr(torch.cpu, "empty_cache"):
        return False
    torch.cpu.empty_cache = lambda: None
    return True
