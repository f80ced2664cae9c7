"""Issue 6: `s2v render --cluster` against a real head (`ray start --head` on 127.0.0.1, free ports, 2 logical
GPUs) runs the example manifest through the Jobs API; outputs land where --set output points.

The head's processes carry an environment marker and are stopped by it alone: `ray stop` would stop every Ray on
the machine, including other tests' and other sessions'."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from procs import ray_head

ROOT = Path(__file__).resolve().parents[1]

EXAMPLE_IDS = ("lesson-01-photosynthesis", "lesson-02-water-cycle", "lesson-03-summary")


@pytest.fixture(scope="module")
def gpu_head(tmp_path_factory):
    """A head with 2 logical GPUs and 2 CPUs (stitching); its dashboard (the Jobs API) on 127.0.0.1 only."""
    with ray_head(num_cpus=2, num_gpus=2, temp_dir=tmp_path_factory.mktemp("ray")) as url:
        yield url


def test_render_cluster_runs_the_example_manifest_through_the_jobs_api(gpu_head, tmp_path, run_cli, monkeypatch,
                                                                       capsys):
    import orchestrator.submit as sub

    monkeypatch.setattr(sub, "_JOBS_FILE", tmp_path / "jobs.json")  # not the user's ~/.s2v
    monkeypatch.chdir(ROOT)  # the working dir that is uploaded is the project
    out, work = tmp_path / "out", tmp_path / "work"
    t0 = time.monotonic()
    code = run_cli("render", "--cluster", gpu_head, "manifests/example.yaml", "--set", f"output={out}",
                   "--work", work, "--run-id", "cluster-1")
    logs = capsys.readouterr()
    text = logs.out + logs.err
    assert code == 0, text[-4000:]
    wall = time.monotonic() - t0

    # the run went through the Jobs API: a submission id was printed and remembered, and it succeeded there
    from ray.job_submission import JobStatus, JobSubmissionClient

    job_id = next(iter(json.loads((tmp_path / "jobs.json").read_text())))
    assert job_id in text
    info = JobSubmissionClient(gpu_head).get_job_info(job_id)
    assert info.status == JobStatus.SUCCEEDED
    assert "orchestrator.cli render manifests/example.yaml" in info.entrypoint
    assert "--cluster" not in info.entrypoint  # the remote driver renders; it does not submit again

    for jid in EXAMPLE_IDS:
        meta = json.loads((out / f"{jid}.json").read_text())
        assert (out / f"{jid}.mp4").stat().st_size > 0 and (out / f"{jid}.jpg").stat().st_size > 0
        assert meta["id"] == jid and meta["frames"] > 0 and meta["backend"]["name"] == "draft"
    assert json.loads((out / "lesson-02-water-cycle.json").read_text())["plan"]["scenes"][1]  # cut into scenes

    # the remote driver (another process) wrote the run state where --work pointed
    state = json.loads((work / "runs" / "cluster-1" / "state.json").read_text())
    assert state["status"] == "finished" and {j["status"] for j in state["jobs"].values()} == {"published"}
    assert state["pid"] != os.getpid()
    report = json.loads((out / "report.json").read_text())
    assert report["exit_code"] == 0 and report["totals"]["published"] == 3
    assert wall < 240
