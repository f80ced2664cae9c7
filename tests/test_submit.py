"""Jobs API submission against a real local head (`ray start --head` on 127.0.0.1, free ports), stopped after.

The head's processes carry an environment marker and are stopped by it: `ray stop` would stop every Ray on the
machine. The entrypoint is a tiny script in a temporary working dir standing in for `s2v render`.
"""

from __future__ import annotations


import pytest

from orchestrator.submit import RemoteRunFailed, _strip_local_flags, dashboard_address, follow, submit_run
from procs import ray_head




@pytest.fixture(scope="module")
def head():
    with ray_head(num_cpus=1) as url:
        yield url


@pytest.fixture(autouse=True)
def jobs_file(tmp_path, monkeypatch):
    import orchestrator.submit as sub

    monkeypatch.setattr(sub, "_JOBS_FILE", tmp_path / "jobs.json")


@pytest.fixture
def project(tmp_path):
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "m.yaml").write_text("jobs: []\n")
    (tmp_path / "fake_render.py").write_text(
        "import os, sys\n"
        "print('RENDER', ' '.join(sys.argv[1:]), 'ADDRESS', os.environ.get('S2V_ADDRESS'), flush=True)\n"
        "assert open(sys.argv[1]).read().startswith('jobs')\n"
        "sys.exit(int(os.environ.get('FAKE_EXIT', '0')))\n"
    )
    return tmp_path


def test_submit_streams_logs_and_succeeds(head, project):
    lines: list[str] = []
    job = submit_run(head, str(project / "manifests" / "m.yaml"), ["--backend", "draft", "--cluster", "c.yaml"],
                     detach=False, working_dir=project, command=["python", "fake_render.py"], echo=lines.append)
    text = "\n".join(lines)
    assert job in text
    assert "RENDER manifests/m.yaml --backend draft ADDRESS auto" in text  # --cluster was not forwarded


def test_submit_failure_exit_code_and_detach(head, project):
    with pytest.raises(RemoteRunFailed) as ei:
        submit_run(head, str(project / "manifests" / "m.yaml"), [], detach=False, working_dir=project,
                   command=["python", "fake_render.py"], env_vars={"FAKE_EXIT": "3"}, echo=lambda s: None)
    assert ei.value.exit_code == 3
    lines: list[str] = []
    job = submit_run(head, str(project / "manifests" / "m.yaml"), [], detach=True, working_dir=project,
                     command=["python", "fake_render.py"], echo=lines.append)
    assert any("s2v status" in line for line in lines)
    # `s2v status JOB` finds the address from the remembered submission.
    out: list[str] = []
    assert follow(job, echo=out.append) == 0
    assert any("RENDER" in line for line in out)


def test_manifest_outside_working_dir_and_addresses(project, tmp_path_factory):
    from core.errors import ConfigError

    other = tmp_path_factory.mktemp("elsewhere") / "m.yaml"
    other.write_text("jobs: []\n")
    with pytest.raises(ConfigError, match="outside the working dir"):
        submit_run("127.0.0.1:1", str(other), [], detach=True, working_dir=project, echo=lambda s: None)
    assert dashboard_address("10.0.0.1") == "http://10.0.0.1:8265"
    assert dashboard_address("http://h:9/") == "http://h:9"
    with pytest.raises(ConfigError):
        dashboard_address("ray://h:10001")
    assert _strip_local_flags(["--detach", "--address=x", "--cluster", "c.yaml", "--gpus", "2"]) == ["--gpus", "2"]
