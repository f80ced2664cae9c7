"""Benchmark 5: the scheduling catalog with random actor kills at a fixed rate: clips redone per fault, overhead."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.common import (
    REAL_CLIP_S,
    catalog,
    catalog_stats,
    emit,
    lower_bound,
    start_ray,
)
from bench.sleepers import run_chains


def redone(starts_dir: Path) -> tuple[int, int]:
    """(render starts, distinct clips): every start beyond the first of a clip is work done again."""
    lines = [ln for f in starts_dir.glob("*.log") for ln in f.read_text().splitlines() if ln.strip()]
    return len(lines), len(set(lines))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--clip-s", type=float, default=0.012, help="scaled seconds per clip")
    ap.add_argument("--kill-every-s", type=float, default=10.0, help="wall seconds between random actor kills")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import ray

    from core.settings import Settings

    plans = catalog(a.jobs)
    settings = Settings(gpus=a.gpus)
    started = start_ray(a.gpus)
    with tempfile.TemporaryDirectory(prefix="s2v-bench-faults-") as tmp:
        try:
            base_dir, fault_dir = Path(tmp, "base"), Path(tmp, "faults")
            base_dir.mkdir(), fault_dir.mkdir()
            base = run_chains(plans, a.clip_s, a.gpus, settings, starts_dir=str(base_dir))
            faulted = run_chains(plans, a.clip_s, a.gpus, settings, kill_every_s=a.kill_every_s, seed=1,
                                 starts_dir=str(fault_dir))
            b_starts, b_unique = redone(base_dir)
            f_starts, f_unique = redone(fault_dir)
        finally:
            # before the folder goes: ray.kill returns before a killed (restarting) actor is gone, and one
            # still starting up would open its log file in there while the folder is being removed
            if started:
                ray.shutdown()
    kills = max(1, faulted["kills"])
    extra_s = faulted["makespan_s"] - base["makespan_s"]
    clips = sum(p.clips for p in plans)
    res = {
        "gpus": a.gpus, "catalog": catalog_stats(plans), "clip_s_scaled": a.clip_s,
        "bound_s": lower_bound(plans, a.clip_s, a.gpus)["bound_s"], "kill_every_s": a.kill_every_s,
        "baseline": {**base, "render_starts": b_starts, "distinct_clips": b_unique},
        "faulted": {**faulted, "render_starts": f_starts, "distinct_clips": f_unique},
        "all_clips_done": f_unique == clips and faulted["failed_jobs"] == 0,
        "clips_redone_per_fault": (f_starts - f_unique) / kills,
        "makespan_overhead": extra_s / base["makespan_s"],
        # each kill idles one of N GPUs for a restart (unscaled here: a process start, ~1 s) plus the lost
        # part of one clip; per-fault GPU-seconds lost, so the overhead can be re-scaled to real clip times
        "gpu_s_lost_per_fault": extra_s * a.gpus / kills,
        "gpu_s_lost_per_fault_in_clips": extra_s * a.gpus / kills / a.clip_s,
        "real_clip_s": REAL_CLIP_S,
    }
    return emit("faults", res, a.out)


if __name__ == "__main__":
    main()
