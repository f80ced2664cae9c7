"""Benchmark 3: per-clip overhead (dispatch + encode + checkpoint + bookkeeping) against render time, with Wan-shaped
motion tails, on a local and an S3 (SeaweedFS on 127.0.0.1) work area: the GPU-idle share between clips; and what a
Wan tail costs to store (compressed vs the plain .npy of before)."""

from __future__ import annotations

import argparse
import io
import itertools
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from bench.common import REAL_CLIP_S, emit, start_ray
from bench.common import media, speech_file

TARGET_CLIP_S = 60.0  # the reference clip: overhead is judged against a 60 s render
WAN_CLIP_S = REAL_CLIP_S  # a 40-step 14B clip on one H100: the idle share a real night sees


@contextmanager
def s3_area(tmp: Path):
    """SeaweedFS on 127.0.0.1, as the tests start it; credentials through the env (the actor gets them too)."""
    from storage_servers import ACCESS_KEY, SECRET_KEY, S3Server

    srv = S3Server(tmp / "seaweed").start()
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": str(tmp / "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "aws-credentials")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield srv, srv.make_bucket("bench-work"), env
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        srv.server.stop()


def _plans(folder: Path, seconds: float, settings, size: str, image_px: int | None) -> list:
    """One job as one chain (max scene 600 s). Without image_px the photo has the size's own aspect, at twice the
    area, so the output is exactly that size (832×480 → tails of 1×3×73×480×832)."""
    from PIL import Image

    from orchestrator.intake.manifest import load_manifest
    from orchestrator.plan.planner import plan_jobs

    folder.mkdir(parents=True, exist_ok=True)
    if image_px:
        image = media.presenter(folder / "presenter.png", size=image_px)
    else:
        w, h = (int(v) for v in size.split("*"))
        image = folder / "presenter.png"
        Image.open(media.presenter(folder / "square.png", size=512)).resize((2 * w, 2 * h)).save(image)
    jobs = [{"id": "job-000", "audio": str(speech_file(folder / "a.wav", seconds, seed=0)), "seed": 0}]
    m = media.write_manifest(folder / "bench.yaml", jobs, {"image": str(image), "size": size, "backend": "faults",
                                                           "max_scene_s": 600, "output": str(folder / "out")})
    res = plan_jobs(load_manifest(str(m), None, settings).jobs, settings)
    assert not res.failed, res.problems
    return list(res.plans)


def pool_run(plans, settings, env: dict, on_clip) -> dict:
    """One RenderWorker actor (loaded once) and the real Scheduler over the chain; env reaches the actor's process
    even when Ray was started before the storage server (a shared test Ray)."""
    import ray

    from bench.common import scheduler_over
    from orchestrator.render.worker import RenderWorker

    cls = ray.remote(RenderWorker).options(num_gpus=1, num_cpus=0, max_restarts=0, max_task_retries=0,
                                           runtime_env={"env_vars": env} if env else None)
    actor = cls.remote(settings, ("faults",))
    try:
        sched = scheduler_over([actor], settings, settings.work, on_clip=on_clip)
        sched.add_jobs(plans, {})
        sched.run()
        return {"loads": sum(ray.get(actor.info.remote(), timeout=60)["loads"].values())}
    finally:
        ray.kill(actor, no_restart=True)


def measure(size: str, image_px: int | None, seconds: float, clip_s: float, tmp: Path, work: str, label: str,
            settings_kw: dict, env: dict) -> dict:
    from core.settings import Settings

    d = tmp / f"{label}-{size.replace('*', 'x')}"
    faults = [{"action": "slow", "seconds": clip_s}, {"action": "wan_tail"}]
    settings = Settings(gpus=1, work=work, cache_dir=d / "cache", faults_dir=str(d / "faults"), faults=faults,
                        seconds_per_clip={"faults": clip_s}, **settings_kw)
    plans = _plans(d, seconds, settings, size, image_px)
    results = []
    pool = pool_run(plans, settings, env, on_clip=lambda js, r: results.append((time.monotonic(), r)))
    steady = results[1:]  # clip 0 also prepares the scene (decode, fit the photo): a once-per-chain cost
    periods = [b[0] - a[0] for a, b in itertools.pairwise(steady)]
    renders = [r["render_s"] for _, r in steady[1:]]  # the render that ends each period
    idle = [p - r for p, r in zip(periods, renders)]
    render = statistics.median(r["render_s"] for _, r in steady)
    actor_total = statistics.median(r["total_s"] for _, r in steady)
    period = statistics.median(periods)
    overhead = max(0.0, period - render)
    idle_s = statistics.median(idle)
    mean_idle = max(0.0, statistics.fmean(idle))
    p = plans[0]
    return {"work": label, "size": f"{p.width}x{p.height}", "tail_shape": [1, 3, 73, p.height, p.width],
            "clips": p.clips, "loads": pool["loads"],
            "render_s": render, "actor_total_s": actor_total, "period_s": period,
            "actor_side_overhead_s": actor_total - render,  # tail checks, H.264 encode, checkpoint upload
            "driver_gap_s": max(0.0, period - actor_total),  # dispatch + bookkeeping not hidden by queuing
            "overhead_s": overhead, "overhead_at_60s_clip": overhead / TARGET_CLIP_S,
            "gpu_idle_s": idle_s, "gpu_idle_mean_s": mean_idle, "gpu_idle_share": sum(idle) / sum(periods),
            # the mean, not the median: a few slow hand-offs are what a night pays for
            f"gpu_idle_share_at_{WAN_CLIP_S:.0f}s_clip": mean_idle / (WAN_CLIP_S + mean_idle),
            "first_clip_extra_s": results[0][1]["total_s"] - actor_total}


def _timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def tail_costs(size: str, work: str, label: str, settings_kw: dict, tmp: Path, repeat: int) -> list[dict]:
    """A Wan tail stored and read back: the plain .npy of before against the compressed checkpoint of now, for a
    bf16 run's tail (what the drill emits) and an fp32 run's (the same with full-mantissa detail)."""
    import numpy as np

    from core.settings import Settings
    from infra.storage import parse, storage_for
    from orchestrator.workarea.tails import decode_tail, encode_tail
    from pipeline.backends.drills.faults import wan_shaped_tail

    w, h = (int(v) for v in size.split("*"))
    frames = np.asarray(media_frames(tmp, w, h))
    bf16 = wan_shaped_tail(frames, np.zeros(2), seed=1)
    fp32 = bf16 + np.random.default_rng(2).random(bf16.shape, dtype=np.float32) * np.float32(2 ** -9)
    settings = Settings(**settings_kw)
    st = storage_for(parse(work), settings)
    rows = []
    for variant, tail in (("bf16-valued", bf16), ("fp32", fp32)):
        buf = io.BytesIO()
        np.save(buf, tail)
        npy = buf.getvalue()
        u_npy, u_new = parse(work).join("bench", f"{variant}.tail.npy"), parse(work).join("bench", f"{variant}.tail")
        npy_write, _ = _timed(lambda: st.write_bytes(u_npy, npy), repeat)
        npy_read, back = _timed(lambda: np.load(io.BytesIO(st.read_bytes(u_npy))), repeat)
        enc_s, data = _timed(lambda: encode_tail(tail), repeat)
        write_s, _ = _timed(lambda: st.write_bytes(u_new, data), repeat)
        read_s, got = _timed(lambda: st.read_bytes(u_new), repeat)
        dec_s, dec = _timed(lambda: decode_tail(got), repeat)
        assert dec.tobytes() == tail.tobytes() and back.tobytes() == tail.tobytes()
        rows.append({"work": label, "variant": variant, "shape": list(tail.shape), "raw_bytes": len(npy),
                     "npy_write_s": npy_write, "npy_read_s": npy_read, "compressed_bytes": len(data),
                     "ratio": len(data) / len(npy), "encode_s": enc_s, "write_s": write_s, "read_s": read_s,
                     "decode_s": dec_s, "save_s": enc_s + write_s, "load_s": read_s + dec_s})
        for u in (u_npy, u_new):
            st.delete(u)
    return rows


def media_frames(tmp: Path, w: int, h: int):
    """73 frames of a moving photo at w×h (the drill tail's source, like the draft renderer's clips)."""
    import numpy as np
    from PIL import Image

    big = np.asarray(Image.open(media.presenter(tmp / "tail-src.png", size=512)).resize((w, h + 40)))
    return np.stack([big[i % 40: i % 40 + h] for i in range(73)])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.overheads", description=__doc__)
    ap.add_argument("--clip-s", type=float, default=1.0, help="backend sleep per clip (plus the draft render)")
    ap.add_argument("--seconds", type=float, default=45.0, help="audio seconds of the one job")
    ap.add_argument("--sizes", default="832*480", help="output sizes; size:photo_px for a square photo instead")
    ap.add_argument("--works", default="local,s3", help="work areas to measure: local, s3 (SeaweedFS)")
    ap.add_argument("--tail-repeat", type=int, default=3, help="best of N for the tail store/load timings")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import ray

    rows, tails = [], []
    with tempfile.TemporaryDirectory(prefix="s2v-bench-overheads-") as tmp_s:
        tmp = Path(tmp_s)
        areas = {"local": (str(tmp / "work"), {}, {})}
        with _maybe_s3("s3" in a.works.split(","), tmp) as s3:
            if s3 is not None:
                srv, bucket, env = s3
                areas["s3"] = (f"s3://{bucket}/work", {"s3_endpoint_url": srv.endpoint, "s3_region": "us-east-1",
                                                       "s3_addressing_style": "path"}, env)
            started = start_ray(1)
            try:
                for label in a.works.split(","):
                    work, kw, env = areas[label]
                    for pair in a.sizes.split(","):
                        size, _, px = pair.partition(":")
                        rows.append(measure(size, int(px) if px else None, a.seconds, a.clip_s, tmp, work, label, kw,
                                            env))
                        tails += tail_costs(size, work, label, kw, tmp, a.tail_repeat)
            finally:
                if started:
                    ray.shutdown()
    return emit("overheads", {"clip_s": a.clip_s, "target_clip_s": TARGET_CLIP_S, "wan_clip_s": WAN_CLIP_S,
                              "rows": rows, "tails": tails}, a.out)


@contextmanager
def _maybe_s3(wanted: bool, tmp: Path):
    if not wanted:
        yield None
        return
    with s3_area(tmp) as s3:
        yield s3


if __name__ == "__main__":
    main()
