"""wan-s2v on CPU with tiny random weights of the real diffsynth classes: loading, chains, tails, resume, sizes."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# find_spec, not importorskip: importing diffsynth before the torchvision shim fails on CPU-only torch
if importlib.util.find_spec("diffsynth") is None or importlib.util.find_spec("torch") is None:
    pytest.skip("the wan extra (torch, diffsynth) is not installed", allow_module_level=True)

from typer.testing import CliRunner  # noqa: E402

from core.settings import Settings
from orchestrator.cli.models import app as models_app  # noqa: E402
from core.errors import ConfigError, RenderError  # noqa: E402
from pipeline.backends import backend_spec  # noqa: E402
from pipeline.backends.base import ClipRequest, SceneInput, clip_frame_counts  # noqa: E402
from pipeline.backends.wan_layout import missing_files  # noqa: E402
from pipeline.backends.wan_s2v import WanS2VBackend, official_size  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
W = H = 64
SR = 16000


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """Tiny weights built once per session through the CLI command users run (`s2v models make-tiny`)."""
    d = tmp_path_factory.mktemp("wan-tiny") / "Wan2.2-S2V-tiny"
    res = CliRunner().invoke(models_app, ["make-tiny", str(d)])
    assert res.exit_code == 0, res.output
    return d


@pytest.fixture(scope="module")
def presenter(tmp_path_factory) -> str:
    from PIL import Image
    from skimage import data

    p = tmp_path_factory.mktemp("media") / "presenter.png"
    Image.fromarray(data.astronaut()[:, 64:448]).save(p)  # 384x512 portrait: exercises resize + centre crop
    return str(p)


def speech_like(frames: int, seed: int = 0) -> np.ndarray:
    """Voiced bursts (a pitched buzz under an envelope) with pauses, frames×1000 samples at 16 kHz."""
    t = np.arange(frames * (SR // 16)) / SR
    env = (np.sin(2 * np.pi * 1.3 * t) > -0.2).astype(np.float32)
    rng = np.random.default_rng(seed)
    buzz = np.sign(np.sin(2 * np.pi * 140 * t)) * 0.2 + rng.normal(0, 0.02, t.size)
    return (buzz * env).astype(np.float32)


def scene_input(image: str, clips=(77, 80), **kw) -> SceneInput:
    frames = sum(clips)
    padded = 77 + 80 * (len(clips) - 1)
    base = dict(job_id="j1", job_key="k1", scene_index=0, image_path=image, prompt="a presenter talking",
                negative_prompt="blurry", seed=7, width=W, height=H, start_frame=0, frames=frames,
                clip_frames=tuple(clips), audio=speech_like(padded), steps=1)
    base.update(kw)
    return SceneInput(**base)


def request(index: int, frames: int, seed: int = 7) -> ClipRequest:
    return ClipRequest(index=index, scene_frame_start=0 if index == 0 else 77 + 80 * (index - 1), frames=frames,
                       job_clip_index=index, seed=seed + index)


@pytest.fixture(scope="module")
def backend(tiny_dir) -> WanS2VBackend:
    b = WanS2VBackend(model_dir=str(tiny_dir))
    b.load("cpu")
    return b


@pytest.fixture(scope="module")
def chain(backend, presenter):
    """Clip 0 and clip 1 of one scene, rendered the uninterrupted way (tail handed over in memory)."""
    ctx = backend.prepare_scene(scene_input(presenter))
    c0 = backend.render_clip(ctx, request(0, 77), None)
    c1 = backend.render_clip(ctx, request(1, 80), c0.tail)
    return ctx, c0, c1


def test_two_clips_have_planned_frames_and_a_float_tail(backend, chain):
    ctx, c0, c1 = chain
    assert backend.loads == 1 and backend.pipe.torch_dtype.is_floating_point
    assert len(ctx.audio_embeds) == 2 and tuple(ctx.audio_embeds[0].shape) == (1, 25, 32, 80)
    assert c0.frames.shape == (77, H, W, 3) and c1.frames.shape == (80, H, W, 3)
    assert c0.frames.dtype == np.uint8 and c1.frames.dtype == np.uint8
    for out in (c0, c1):
        assert out.tail.shape == (1, 3, 73, H, W) and out.tail.dtype == np.float32
        assert -1.0 <= out.tail.min() and out.tail.max() <= 1.0
        assert out.frames.std() > 1.0  # real pixels, not a constant image
        assert out.frames.flags.c_contiguous and out.tail.flags.c_contiguous  # encoders take raw buffers
    # the tail is the clip's own last 73 frames, unquantised
    assert np.abs(((c1.tail[0].transpose(1, 2, 3, 0) + 1) * 127.5).round() - c1.frames[-73:]).max() <= 0.5


def test_second_clip_is_conditioned_on_the_first_clips_tail(backend, chain):
    ctx, c0, c1 = chain
    other = backend.render_clip(ctx, request(1, 80), np.flip(c0.tail, axis=2).copy())
    assert np.abs(other.frames.astype(int) - c1.frames).mean() > 0.5


def test_clip_resumed_from_a_tail_on_disk_in_a_fresh_backend_is_identical(tiny_dir, presenter, chain, tmp_path):
    _, c0, c1 = chain
    np.save(tmp_path / "tail.npy", c0.tail)
    fresh = WanS2VBackend(model_dir=str(tiny_dir))  # a restarted actor: new load, new scene preparation
    fresh.load("cpu")
    ctx = fresh.prepare_scene(scene_input(presenter))
    resumed = fresh.render_clip(ctx, request(1, 80), np.load(tmp_path / "tail.npy"))
    assert np.array_equal(resumed.frames, c1.frames)
    assert np.array_equal(resumed.tail, c1.tail)


def test_last_clip_is_trimmed_to_the_planned_frames(backend, chain):
    ctx, c0, c1 = chain
    short = backend.render_clip(ctx, request(1, 30), c0.tail)
    assert short.frames.shape == (30, H, W, 3)
    assert np.array_equal(short.frames, c1.frames[:30])


def test_a_clip_without_its_tail_or_with_a_wrong_one_is_refused(backend, chain):
    ctx, c0, _ = chain
    with pytest.raises(RenderError, match="motion tail"):
        backend.render_clip(ctx, request(1, 80), None)
    with pytest.raises(RenderError, match="shape"):
        backend.render_clip(ctx, request(1, 80), c0.tail[:, :, :40])
    with pytest.raises(RenderError, match="outside"):
        backend.render_clip(ctx, request(2, 80), c0.tail)


def test_pose_video_becomes_per_clip_latents_that_change_the_clip(backend, presenter, chain, tmp_path):
    import av

    pose = tmp_path / "pose.mp4"
    with av.open(str(pose), "w") as box:
        st = box.add_stream("mpeg4", rate=25)
        st.width, st.height, st.pix_fmt = 96, 64, "yuv420p"
        for i in range(60):  # 2.4 s at 25 fps: shorter than the scene
            img = np.zeros((64, 96, 3), np.uint8)
            img[:, (i * 3) % 96:(i * 3) % 96 + 8] = 255
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                box.mux(pkt)
        for pkt in st.encode():
            box.mux(pkt)
    ctx = backend.prepare_scene(scene_input(presenter, pose_path=str(pose)))  # clip 1 lies past the pose's end
    assert len(ctx.pose_latents) == 2 and tuple(ctx.pose_latents[0].shape) == (1, 16, 20, H // 8, W // 8)
    # past its end the pose is blank (-1, as upstream pads), not the last pose frame held
    import torch
    from diffsynth.pipelines.wan_video import WanVideoUnit_S2V

    blank = WanVideoUnit_S2V().process_pose_cond(backend.pipe, [np.zeros((H, W, 3), np.uint8)] * 80, 81, H, W, True,
                                                 (30, 52), (15, 26), num_repeats=1, return_all=True)[0]
    assert torch.equal(ctx.pose_latents[1], blank) and not torch.equal(ctx.pose_latents[0], blank)
    posed = backend.render_clip(ctx, request(0, 77), None)
    assert np.abs(posed.frames.astype(int) - chain[1].frames[:77]).mean() > 0.5


def test_missing_files_are_each_named(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "Wan2.1_VAE.pth").unlink()
    (broken / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    (broken / "wav2vec2-large-xlsr-53-english" / "model.safetensors").unlink()
    assert missing_files(tiny_dir) == []
    b = WanS2VBackend(model_dir=str(broken))
    with pytest.raises(ConfigError) as err:
        b.load("cpu")
    for name in ("Wan2.1_VAE.pth", "diffusion_pytorch_model-00002-of-00002.safetensors", "model.safetensors"):
        assert name in str(err.value)
    res = CliRunner().invoke(models_app, ["check", str(broken)])
    assert res.exit_code == 2 and "Wan2.1_VAE.pth" in res.output


def test_model_dir_comes_from_the_scene_when_settings_have_none(tiny_dir, presenter):
    b = WanS2VBackend()
    b.load("cpu")
    assert b.pipe is None  # nothing to load yet: no hub download, no guessing
    with pytest.raises(ConfigError, match="model_dir"):
        b.prepare_scene(scene_input(presenter, clip_frames=(77,)))
    ctx = b.prepare_scene(scene_input(presenter, clips=(20,), model_dir=str(tiny_dir)))
    assert b.loads == 1 and len(ctx.audio_embeds) == 1


def test_official_sizes_keep_aspect_never_upscale_and_fit_the_area():
    assert official_size((512, 512), (64, 64)) == (64, 64)
    assert official_size((512, 512), (832, 480)) == (512, 512)  # already inside the budget: no upscale
    w, h = official_size((1920, 1080), (832, 480))
    assert w % 64 == 0 and h % 64 == 0 and w * h <= 832 * 480 and abs(w / h - 16 / 9) < 0.2
    w, h = official_size((1000, 700), (1024, 704))
    assert (w, h) == (960, 640)  # upstream would pad up to 1024x704, beyond the image
    assert WanS2VBackend.output_size((1080, 1920), (704, 1024))[1] > WanS2VBackend.output_size((1080, 1920), (704, 1024))[0]


def test_plan_of_a_chain_is_frame_exact_with_the_shorter_first_clip():
    spec = backend_spec("wan-s2v")
    assert (spec.first_clip_frames, spec.clip_frames, spec.tail_frames) == (77, 80, 73)
    for total in (1, 77, 78, 157, 158, 1000):
        counts = clip_frame_counts(total, spec)
        assert sum(counts) == total and counts[0] <= 77 and all(c <= 80 for c in counts)


def test_importing_the_backend_and_manifest_does_not_import_torch(tiny_dir):
    """The planner's path, the weights fingerprint included, runs on a driver without torch."""
    code = ("import sys, json; import pipeline.backends.wan_s2v, pipeline.backends.wan_tiny, orchestrator.intake.manifest, "
            "orchestrator.cli.models, orchestrator.cli, orchestrator.plan.planner; from pipeline.backends import backend_spec; backend_spec('wan-s2v');"
            "from pathlib import Path; from pipeline.backends.weights_id import folder_fingerprint; "
            "from pipeline.backends.wan_s2v import WanS2VBackend as B; d = Path(sys.argv[1]); "
            "assert len(folder_fingerprint(d, B.weights_files(d))) == 32;"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffsynth', "
            "'transformers', 'torchvision'))))")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_dir)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_torchvision_shim_is_idempotent():
    from pipeline.backends.torch_compat import ensure_torchvision

    ensure_torchvision()
    assert ensure_torchvision() == []
    import torchvision  # noqa: F401


@pytest.mark.slow
def test_two_scene_job_renders_end_to_end_through_the_scheduler(tiny_dir, ray_local, settings, tmp_path):
    """Real path: manifest → plan → Ray actors (tiny weights loaded once each) → clip chains → stitch → publish."""
    import media

    from orchestrator.run.runner import render
    from pipeline.media import count_video_frames

    pcm, pauses = media.speech([(5.5, 0.6), (2.0, 0)], seed=5)  # 8.1 s: a 2-clip scene, a pause, a 1-clip scene
    wav = media.write_wav(tmp_path / "talk.wav", pcm)
    img = media.presenter(tmp_path / "presenter.png")
    out_dir = tmp_path / "out"
    manifest = media.write_manifest(tmp_path / "jobs.yaml", [{
        "id": "talk", "audio": str(wav), "image": str(img), "prompt": "a presenter talking", "backend": "wan-s2v",
        "model_dir": str(tiny_dir), "size": "64*64", "steps": 1, "max_scene_s": 7.0, "min_scene_s": 1.0,
        "output": str(out_dir)}])
    res = render(str(manifest), settings)
    job = res.jobs["talk"]
    assert res.exit_code == 0, (job.status, job.reason)
    assert job.status == "published" and job.scenes == 2 and job.clips == 3 and job.clips_rendered == 3
    mp4s = sorted(out_dir.rglob("*.mp4"))
    assert len(mp4s) == 1
    assert count_video_frames(mp4s[0]) == round(len(pcm) / SR * 16)
    loads = [a["loads"].get("wan-s2v", 0) for a in res.actors]
    assert 1 <= sum(loads) and max(loads) == 1  # one model load per actor that rendered, never per scene/clip
    assert sum(a["clips"] for a in res.actors) == 3


# ---- upstream-faithful defaults ----------------------------------------------------------------------------------
def test_a_scene_without_a_negative_prompt_gets_upstreams_and_an_empty_one_stays_empty(backend, presenter):
    from pipeline.backends.wan_s2v import UPSTREAM_NEGATIVE_PROMPT

    assert "手快速抖动" in UPSTREAM_NEGATIVE_PROMPT  # S2V's own text (against fast shaking hands), not the generic one
    assert backend.prepare_scene(scene_input(presenter, clips=(20,), negative_prompt=None)).negative_prompt \
        == UPSTREAM_NEGATIVE_PROMPT
    assert backend.prepare_scene(scene_input(presenter, clips=(20,), negative_prompt="")).negative_prompt == ""


def _plan(job: dict, tmp_path, settings, name="j"):
    import media

    from orchestrator.intake.manifest import JobSpec
    from orchestrator.plan.planner import plan_job

    wav = tmp_path / "talk.wav"
    if not wav.exists():
        media.write_wav(wav, media.speech([(1.5, 0)], seed=2)[0])
        media.presenter(tmp_path / "p.png")
    return plan_job(JobSpec(**{"id": name, "audio": str(wav), "image": str(tmp_path / "p.png"),
                               "backend": "wan-s2v", **job}), settings)


def test_negative_prompt_default_is_resolved_in_the_plan_and_the_key(tiny_dir, tmp_path, settings):
    from orchestrator.intake.manifest import load_manifest
    from pipeline.backends.wan_s2v import UPSTREAM_NEGATIVE_PROMPT

    csv = tmp_path / "jobs.csv"
    csv.write_text("id,audio,image,negative_prompt\na,x.wav,x.png,\nb,x.wav,x.png,None\nc,x.wav,x.png,blurry\n")
    a, b, c = load_manifest(str(csv), None, Settings()).jobs
    assert (a.negative_prompt, b.negative_prompt, c.negative_prompt) == (None, "", "blurry")
    base = {"model_dir": str(tiny_dir)}
    default = _plan(base, tmp_path, settings)
    assert default.job.negative_prompt == UPSTREAM_NEGATIVE_PROMPT  # what the actor and the sidecar see
    assert _plan({**base, "negative_prompt": UPSTREAM_NEGATIVE_PROMPT}, tmp_path, settings).key == default.key
    none = _plan({**base, "negative_prompt": "none"}, tmp_path, settings)
    assert none.job.negative_prompt == "" and none.key != default.key


# ---- memory settings ---------------------------------------------------------------------------------------------
def test_every_dtype_name_settings_accept_loads_as_that_dtype():
    import re

    import torch

    from core.settings import Settings
    from pipeline.backends.wan_loader import torch_dtype

    pattern = Settings.model_fields["wan_dtype"].metadata[0].pattern
    names = re.fullmatch(r"\^\((.*)\)\$", pattern).group(1).split("|")
    assert len(names) == 6
    for name in names:
        assert Settings(wan_dtype=name).wan_dtype == name
        want = {"bf": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
                "fp32": torch.float32, "float32": torch.float32}[name if name != "bf16" else "bf"]
        assert torch_dtype(name, "cuda:0") is want


def test_offload_modes_are_diffsynths_documented_vram_configs():
    import torch

    from pipeline.backends.wan_loader import load_device, settings_problem, vram_configs

    bf16, shards = torch.bfloat16, ["a-00001.safetensors", "a-00002.safetensors"]
    disk = vram_configs("cuda:0", bf16, "disk", None, shards)
    assert (disk["dit"]["offload_device"], disk["dit"]["onload_device"], disk["dit"]["computation_device"]) == \
        ("disk", "disk", "cuda:0")
    # diffsynth reads only .safetensors lazily; a .pth under a disk config is torch.load-ed whole onto the first
    # non-disk device of its config. The T5 (11.4 GB) and the VAE must land in RAM, never on the GPU.
    assert load_device(disk["text_encoder"]) == "cpu" and load_device(disk["vae"]) == "cpu"
    cpu = vram_configs("cuda:0", bf16, "cpu", None, shards)
    assert all(load_device(c) == "cpu" and c["onload_device"] == "cuda:0" for c in cpu.values())  # "CPU Offload"
    limited = vram_configs("cuda:0", bf16, "cpu", 40.0, shards)
    assert all(c["onload_device"] == "cpu" and c["preparing_device"] == "cuda:0" for c in limited.values())
    resident = vram_configs("cuda:0", bf16, None, None, shards)
    assert all(c["offload_device"] is None and load_device(c) == "cuda:0" for c in resident.values())
    with pytest.raises(ConfigError, match="safetensors"):
        vram_configs("cuda:0", bf16, "disk", None, ["dit.pth"])
    assert "wan_offload" in settings_problem(None, 20.0) and "not one of" in settings_problem("gpu", None)
    assert settings_problem("disk", 20.0) is None


def test_disk_offload_reads_dit_layers_from_disk_and_renders_the_same_frames(tiny_dir, presenter, chain):
    b = WanS2VBackend(model_dir=str(tiny_dir), offload="disk")
    b.load("cpu")
    out = b.render_clip(b.prepare_scene(scene_input(presenter)), request(0, 77), None)
    assert np.array_equal(out.frames, chain[1].frames)
    # between uses the DiT's block weights are not in memory at all: they live in the safetensors shards
    assert all(p.is_meta for p in b.pipe.dit.blocks[0].parameters())


def test_a_new_model_dir_frees_the_old_pipeline_before_loading(tiny_dir, presenter, tmp_path, monkeypatch):
    import weakref

    from pipeline.backends import wan_loader

    other = tmp_path / "other" / tiny_dir.name
    shutil.copytree(tiny_dir, other)
    b = WanS2VBackend(model_dir=str(tiny_dir))
    b.load("cpu")
    old = weakref.ref(b.pipe)
    real, seen = wan_loader.load_pipeline, []

    def spy(*args, **kwargs):
        seen.append(old() is None)  # is the previous pipeline already gone when this load starts?
        return real(*args, **kwargs)

    monkeypatch.setattr(wan_loader, "load_pipeline", spy)
    b.prepare_scene(scene_input(presenter, clips=(20,), model_dir=str(other)))
    assert seen == [True] and b.loads == 2 and b.loaded_dir == str(other)


def test_job_key_identifies_weights_by_content_not_folder_name(tiny_dir, tmp_path, settings):
    from pipeline.backends import weights_id

    a, b = tmp_path / "a" / "Wan2.2-S2V-14B", tmp_path / "b" / "Wan2.2-S2V-14B"
    shutil.copytree(tiny_dir, a)
    shutil.copytree(tiny_dir, b)
    key = lambda d: _plan({"model_dir": str(d)}, tmp_path, settings).key  # noqa: E731
    assert key(a) == key(b)  # same bytes under two paths: one identity, shared checkpoints
    shard = b / "diffusion_pytorch_model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # one weight changes by one bit
    shard.write_bytes(bytes(data))
    assert key(a) != key(b)
    # digests are cached by path, size, mtime and inode (memory, then the cache folder), never re-hashed per plan:
    # rewritten in place with its size and mtime restored, the file keeps the digest computed before
    st = shard.stat()
    data[-1] ^= 0xFF
    with open(shard, "r+b") as fh:
        fh.write(bytes(data))
    import os

    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    weights_id._MEMO.clear()  # a new planner process: only the on-disk cache remembers
    assert (settings.cache_dir / weights_id.CACHE_NAME).is_file()
    assert key(a) != key(b)


# ---- LoRA --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_file(tiny_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "tiny-lora.safetensors"
    res = CliRunner().invoke(models_app, ["make-tiny-lora", str(tiny_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_a_lora_changes_the_frames_resumes_exactly_and_leaves_no_trace(tiny_dir, backend, presenter, chain,
                                                                        lora_file, tmp_path):
    ctx, c0, _ = chain
    lctx = backend.prepare_scene(scene_input(presenter, lora_path=str(lora_file), lora_scale=1.0))
    l0 = backend.render_clip(lctx, request(0, 77), None)
    assert np.abs(l0.frames.astype(int) - c0.frames).mean() > 0.5
    l1 = backend.render_clip(lctx, request(1, 80), l0.tail)
    # the next job on the same actor has no LoRA: it renders as if the actor had never seen one
    assert np.array_equal(backend.render_clip(ctx, request(0, 77), None).frames, c0.frames)
    np.save(tmp_path / "tail.npy", l0.tail)
    fresh = WanS2VBackend(model_dir=str(tiny_dir))  # a restarted actor resumes the LoRA chain from its checkpoint
    fresh.load("cpu")
    resumed = fresh.render_clip(fresh.prepare_scene(scene_input(presenter, lora_path=str(lora_file))),
                                request(1, 80), np.load(tmp_path / "tail.npy"))
    assert np.array_equal(resumed.frames, l1.frames) and np.array_equal(resumed.tail, l1.tail)


def test_a_lora_for_another_model_is_refused_by_name(backend, presenter, tmp_path):
    import torch
    from safetensors.torch import save_file

    bad = tmp_path / "sdxl-lora.safetensors"
    save_file({"unet.down.0.attn.to_q.lora_A.weight": torch.zeros(4, 8),
               "unet.down.0.attn.to_q.lora_B.weight": torch.zeros(8, 4)}, str(bad))
    ctx = backend.prepare_scene(scene_input(presenter, clips=(20,), lora_path=str(bad)))
    with pytest.raises(ConfigError, match="matches no layer"):
        backend.render_clip(ctx, request(0, 20), None)
    assert backend.lora_active is None


def test_lora_is_part_of_the_job_key_and_refused_by_backends_without_it(tiny_dir, lora_file, tmp_path, settings):
    from core.errors import MediaError

    base = {"model_dir": str(tiny_dir)}
    keys = {_plan(j, tmp_path, settings).key for j in
            (base, {**base, "lora": str(lora_file)}, {**base, "lora": str(lora_file), "lora_scale": 0.5})}
    assert len(keys) == 3
    with pytest.raises(MediaError, match="LoRA"):
        _plan({"backend": "draft", "lora": str(lora_file)}, tmp_path, settings)
