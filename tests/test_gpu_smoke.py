"""wan-s2v on CUDA in bf16 with tiny weights: a 2-clip chain renders and resumes bit-exactly, also in a fresh backend.

Skipped without CUDA. Resume determinism is asserted bit-exact: the forward kernels on this path (cuBLAS GEMMs,
SDPA attention, cuDNN 3-D convolutions without benchmark mode) are deterministic for identical shapes on one GPU
model and driver, which is what a restarted actor on the same node type sees. If a card breaks that, the failure
message carries the largest difference so the tolerance can be set from a measurement, not a guess.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffsynth") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="needs CUDA and the wan extra")
def test_tiny_chain_renders_and_resumes_exactly_in_bf16_on_cuda(tmp_path, capsys):
    import torch
    from PIL import Image
    from skimage import data

    from pipeline.backends.base import ClipRequest, SceneInput
    from pipeline.backends.wan_s2v import WanS2VBackend
    from pipeline.backends.wan_tiny import make_tiny

    weights = make_tiny(tmp_path / "tiny")
    Image.fromarray(data.astronaut()).save(tmp_path / "p.png")
    w = h = 256
    rng = np.random.default_rng(0)
    scene = SceneInput(job_id="g", job_key="g", scene_index=0, image_path=str(tmp_path / "p.png"), seed=3,
                       width=w, height=h, start_frame=0, frames=157, clip_frames=(77, 80),
                       audio=(0.1 * rng.standard_normal(157 * 1000)).astype(np.float32), steps=4)

    def clip(i: int) -> ClipRequest:
        return ClipRequest(index=i, scene_frame_start=77 * i, frames=(77, 80)[i], job_clip_index=i, seed=3 + i)

    b = WanS2VBackend(model_dir=str(weights))
    b.load("cuda:0")
    assert b.pipe.torch_dtype == torch.bfloat16 and str(b.pipe.device).startswith("cuda")
    torch.cuda.reset_peak_memory_stats()
    ctx = b.prepare_scene(scene)
    times, outs = [], []
    for i in range(2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs.append(b.render_clip(ctx, clip(i), outs[-1].tail if outs else None))
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    assert outs[0].frames.shape == (77, h, w, 3) and outs[1].frames.shape == (80, h, w, 3)
    assert np.isfinite(outs[1].tail).all() and outs[1].frames.std() > 1.0
    peak = torch.cuda.max_memory_allocated() / 2**20

    def same(got, want, what: str) -> None:
        diff = int(np.abs(got.frames.astype(int) - want.frames).max())
        assert np.array_equal(got.frames, want.frames), f"{what}: bf16 frames differ by up to {diff} levels"

    same(b.render_clip(ctx, clip(1), outs[0].tail.copy()), outs[1], "resume in the same backend")
    tail = outs[0].tail.copy()
    b.unload()
    fresh = WanS2VBackend(model_dir=str(weights))  # a restarted actor: new load, new scene preparation
    fresh.load("cuda:0")
    same(fresh.render_clip(fresh.prepare_scene(scene), clip(1), tail), outs[1], "resume in a fresh backend")
    with capsys.disabled():
        print(f"\n[gpu smoke] {torch.cuda.get_device_name(0)}: {w}x{h}, 4 steps, s/clip "
              f"{', '.join(f'{t:.2f}' for t in times)}, peak {peak:.0f} MiB")
