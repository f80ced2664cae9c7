"""The render policy on the in-process runtime (orchestrator/render/inprocess.py): the real Scheduler and Pool, with
scripted actors on a virtual clock instead of Ray — every test runs in milliseconds and the same way every time.
What Ray itself does (restarting actors, placing them on nodes, draining) is the runtime's part here; tests on a
real Ray for those are test_faults.py, test_pool.py, test_preemption*.py and the cloud rehearsal."""

from __future__ import annotations

import collections

import pytest

from core.settings import NodePrice, Settings
from orchestrator.render.inprocess import InProcessRuntime
from orchestrator.render.scripted_worker import ScriptedWorker
from orchestrator.render.slots import SlotState
from policy import Harness, plan

GPU = {"s2v-price-key": "gpu-node", "s2v-market": "spot"}
HEAD = {"s2v-price-key": "head-node", "s2v-market": "on-demand"}
PRICES = {"gpu-node": NodePrice(on_demand=8.0, spot=3.6), "head-node": NodePrice(on_demand=0.36, spot=0.36)}


@pytest.fixture
def s(tmp_path):
    return Settings(gpus=2, work=str(tmp_path / "work"), cost_poll_s=1.0)


@pytest.fixture(autouse=True)
def no_launcher_config(tmp_path, monkeypatch):
    import orchestrator.render.pool as pool_mod

    monkeypatch.setattr(pool_mod, "BOOTSTRAP_CONFIG", str(tmp_path / "no-launcher-config.yaml"))


def _saved(worker) -> dict:
    """(job, scene) → clips in the order they were checkpointed."""
    out = collections.defaultdict(list)
    for job, si, ci, _ in worker.saved:
        out[(job, si)].append(ci)
    return dict(out)


def _elastic(s, worker, **kw) -> Harness:
    """A cluster with a CPU head and no GPU yet (min_workers 0); the test plays the autoscaler."""
    rt = InProcessRuntime(worker, gpus=None, **kw)
    rt.add_node(gpus=0, labels=HEAD, head=True)
    return Harness(s.model_copy(update={"address": "cluster:6379", "node_prices": PRICES}), s.work, runtime=rt)


# ---------- order, chains, resume ----------

def test_longest_chain_first_priority_first_and_every_chain_in_order(s):
    w = ScriptedWorker.configure()
    plans = [plan("short", 2), plan("long", 5, 1), plan("urgent", 1, priority=5)]
    h = Harness(s, s.work, worker=w).run(plans)
    assert sorted(h.ready) == ["long", "short", "urgent"] and not h.failed
    assigns = [(e.job, e.scene) for e in h.kinds("assign")]
    assert assigns[:3] == [("urgent", 0), ("long", 0), ("short", 0)]  # priority, then the longest chains
    assert all(v == list(range(len(v))) for v in _saved(w).values())  # each chain in order, each clip once
    assert len(w.saved) == sum(p.clips for p in plans) and len(w.starts) == len(w.saved)
    # two actors, 9 clips of 1 s: the 5-clip chain is the lower bound, and the schedule meets it
    assert h.rt.now() == pytest.approx(5.0, abs=0.6)


def test_a_resumed_job_starts_at_its_first_missing_clip(s, tmp_path):
    from orchestrator.workarea.layout import WorkArea

    p, wa, clip = plan("a", 4), WorkArea.at(s.work, s), tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    for ci in (0, 1):  # what an earlier run left
        wa.save_clip(p.key, 0, ci, clip, None, {"clip": ci})
    w = ScriptedWorker.configure()
    h = Harness(s, s.work, worker=w).run([p], done={p.key: wa.done_clips(p.key)})
    assert [(j, c) for j, _, c, _ in w.starts] == [("a", 2), ("a", 3)] and h.ready == ["a"]


def test_the_same_inputs_make_the_same_events(s, tmp_path):
    def once(i):
        w = ScriptedWorker.configure({"action": "fail", "job": "b", "clip": 1}, {"action": "crash", "job": "c"})
        ss = s.model_copy(update={"work": str(tmp_path / f"w{i}")})
        return [(e.t, e.kind, e.job, e.scene, e.clip, e.slot) for e in
                Harness(ss, ss.work, worker=w).run([plan("a", 3), plan("b", 3), plan("c", 2, 2)]).events]

    assert once(0) == once(1)


# ---------- application errors: retries elsewhere, attempts, blocklist ----------

def test_a_failed_chain_goes_to_another_actor_first_and_the_job_publishes(s):
    w = ScriptedWorker.configure({"action": "fail", "job": "a", "clip": 1, "actor": 0})
    h = Harness(s, s.work, worker=w).run([plan("a", 3), plan("b", 3)])
    assert sorted(h.ready) == ["a", "b"]
    errors = h.kinds("error")
    assert [(e.job, e.slot) for e in errors] == [("a", 0)]
    after = [e for e in h.kinds("assign") if e.job == "a" and e.t > errors[0].t]
    assert after and after[0].slot == 1  # retried on the other actor, from its checkpoint
    assert [c for j, _, c, _ in w.starts if j == "a"].count(0) == 1  # clip 0 was not rendered again
    assert h.sched.jobs["a"].attempts == 1


def test_a_job_failing_everywhere_fails_after_max_attempts_and_the_others_go_on(s):
    w = ScriptedWorker.configure({"action": "fail", "job": "bad", "times": 0})
    h = Harness(s.model_copy(update={"max_attempts": 3}), s.work, worker=w).run(
        [plan("bad", 3), plan("ok1", 2), plan("ok2", 2)])
    assert sorted(h.ready) == ["ok1", "ok2"]
    assert h.failed["bad"].startswith("failed after 3 attempts: RenderError") and "scripted failure" in h.failed["bad"]
    assert len([e for e in h.kinds("error") if e.job == "bad"]) == 3


def test_an_actor_failing_several_jobs_is_taken_out_of_rotation(s):
    w = ScriptedWorker.configure({"action": "fail", "actor": 1, "times": 0})
    ss = s.model_copy(update={"blocklist_after_jobs": 2, "max_attempts": 3})
    h = Harness(ss, s.work, worker=w).run([plan(f"j{i}", 2) for i in range(6)])
    assert sorted(h.ready) == [f"j{i}" for i in range(6)] and not h.failed
    assert len({e.job for e in h.kinds("error")}) == 2  # blocked once it had failed two different jobs
    assert h.pool.slots[1].state is SlotState.BLOCKED and h.kinds("blocked")[0].slot == 1
    assert all(a == 0 for *_, a in w.saved)  # everything was rendered by the healthy actor


# ---------- infrastructure: lost actors, watchdog, nodes ----------

def test_an_actor_dying_mid_clip_resumes_from_its_checkpoint_without_an_attempt(s):
    w = ScriptedWorker.configure({"action": "crash", "job": "a", "clip": 2})
    h = Harness(s, s.work, worker=w).run([plan("a", 4), plan("b", 1)])
    assert sorted(h.ready) == ["a", "b"]
    js = h.sched.jobs["a"]
    assert js.infra_retries == 1 and js.attempts == 0
    starts = collections.Counter((j, c) for j, _, c, _ in w.starts)
    assert starts[("a", 2)] == 2 and all(n == 1 for k, n in starts.items() if k != ("a", 2))
    lost = h.kinds("lost")
    assert [(e.job, e.clip) for e in lost] == [("a", 2)]
    assert len(h.kinds("ready")) == 3  # two actors, and the restarted one answered again


def test_the_watchdog_kills_a_hung_clip_and_the_job_is_retried(s):
    w = ScriptedWorker.configure({"action": "hang", "job": "a", "clip": 1})
    ss = s.model_copy(update={"clip_timeout_min_s": 30.0, "clip_timeout_factor": 2.0})
    h = Harness(ss, s.work, worker=w).run([plan("a", 3)])
    assert h.ready == ["a"]
    lost = h.kinds("lost")
    assert [(e.job, e.clip, e.detail) for e in lost] == [("a", 1, "watchdog")]
    assert 30.0 <= lost[0].t < 32.0  # the limit, not the hang (max(30 s, 2 × 0.6 s))
    assert h.sched.jobs["a"].attempts == 1 and h.sched.jobs["a"].infra_retries == 1


def test_a_node_removed_mid_chain_restarts_its_actor_elsewhere_and_the_chain_resumes(s):
    w = ScriptedWorker.configure()
    rt = InProcessRuntime(w, gpus=None)
    nodes = [rt.add_node(gpus=1), rt.add_node(gpus=1), rt.add_node(gpus=1)]
    rt.at(2.5, rt.remove_node, nodes[0])  # mid-clip, both actors busy; the third node has room
    h = Harness(s, s.work, runtime=rt, worker=w).run([plan("a", 6), plan("b", 6)])
    assert sorted(h.ready) == ["a", "b"]
    assert sum(j.infra_retries for j in h.sched.jobs.values()) == 1
    assert len(w.starts) == 12 + 1  # only the clip running on the lost node was rendered twice
    assert {e.node for e in h.kinds("ready")} == {nodes[0], nodes[1], nodes[2]}


def test_no_actor_able_to_start_fails_the_queue_at_once_with_the_reason(s):
    w = ScriptedWorker.configure(broken="torch 2.13.0 is a CPU-only build")
    h = Harness(s, s.work, worker=w).run([plan("a", 2), plan("b", 2)])
    assert not h.ready and set(h.failed) == {"a", "b"}
    assert all(r == "no GPU worker could start: CudaUnavailable: torch 2.13.0 is a CPU-only build"
               for r in h.failed.values())
    assert h.rt.now() < 2.0


def test_no_worker_ever_coming_fails_the_queue_after_the_timeout(s):
    ss = s.model_copy(update={"no_worker_timeout_s": 120.0})
    h = _elastic(ss, ScriptedWorker.configure()).run([plan("a", 2)])
    assert h.failed == {"a": "no GPU worker came back within 120s"} and 120.0 <= h.rt.now() < 122.0


# ---------- the elastic pool ----------

def test_the_pool_grows_with_each_gpu_that_joins_shrinks_and_grows_again_priced_by_node_hours(s):
    w = ScriptedWorker.configure(clip_s=10.0)
    h = _elastic(s.model_copy(update={"gpus": 3}), w)
    rt = h.rt
    gpus = []
    rt.at(5, lambda: gpus.extend(rt.add_node(gpus=1, labels=GPU) for _ in range(3)))
    rt.at(50, lambda: rt.remove_node(gpus[0]))
    rt.at(60, lambda: gpus.append(rt.add_node(gpus=1, labels=GPU)))
    h.run([plan(f"j{i}", 8) for i in range(4)])
    assert sorted(h.ready) == [f"j{i}" for i in range(4)]
    assert rt.requests[0] == [{"GPU": 1}] * 3  # three of the four chains could run at once: three GPUs
    assert rt.requests[-1] == [] and all(a.state == "dead" for a in rt.actors)  # everything given back at the end
    ready = [e for e in h.kinds("ready")]
    assert {e.node for e in ready[:3]} == set(gpus[:3]) and ready[-1].node == gpus[3]  # grew again on the new node
    assert h.pool.peak_workers == 3 and len(h.kinds("lost")) == 1
    starts = collections.Counter((j, c) for j, _, c, _ in w.starts)
    assert sum(n - 1 for n in starts.values()) == 1  # the clip running on the lost node, nothing else
    h.pool.ledger.finish()
    cost = h.pool.ledger.summary()
    rows = {r["node"]: r for r in cost["nodes"]}
    assert cost["priced"] and rows[gpus[0]]["hours"] == pytest.approx(45 / 3600)  # joined at 5 s, gone at 50 s
    assert rows["node-0"]["head"] and rows["node-0"]["usd_per_hour"] == 0.36
    assert cost["cost_usd"] == pytest.approx(sum(r["hours"] * r["usd_per_hour"] for r in rows.values()), rel=1e-4)
    assert cost["node_hours"] == pytest.approx(sum(r["hours"] for r in rows.values()), rel=1e-4)
    assert h.sched.jobs["j0"].cost_usd == pytest.approx(h.sched.jobs["j0"].gpu_s * 3.6 / 3600)


def test_surplus_actors_are_retired_as_the_chains_run_out(s):
    w = ScriptedWorker.configure()
    h = _elastic(s.model_copy(update={"gpus": 3}), w)
    h.rt.at(1, lambda: [h.rt.add_node(gpus=1, labels=GPU) for _ in range(3)])
    h.run([plan("long", 8), plan("s1", 1), plan("s2", 1)])
    retired = [e for e in h.kinds("retired") if "surplus" in e.detail]
    assert len(retired) == 2 and all(e.t < 5 for e in retired)  # the short chains ended: one actor is enough
    assert h.rt.requests[-2] == [{"GPU": 1}] and h.rt.requests[-1] == []


def test_spot_that_never_comes_turns_into_on_demand_and_says_so(s):
    def autoscaler(rt, bundles):  # no spot capacity at all; an on-demand node comes a minute after it is asked
        if any("s2v_ondemand" in b for b in bundles) and len(rt.nodes) == 1:
            rt.at(rt.now() + 60, rt.add_node, gpus=1, resources={"s2v_ondemand": 1},
                  labels={"s2v-price-key": "gpu-node", "s2v-market": "on-demand"})

    h = _elastic(s.model_copy(update={"spot_wait_s": 600.0}), ScriptedWorker.configure(), autoscaler=autoscaler)
    h.run([plan("one", 2)])
    assert h.ready == ["one"]
    assert h.rt.requests[0] == [{"GPU": 1}] and [{"GPU": 1, "s2v_ondemand": 1}] in h.rt.requests
    od = h.kinds("ondemand")[0]
    assert 600 <= od.t < 602 and "did not come within 600 s" in h.pool.ondemand_reason
    assert [e.node for e in h.kinds("ready")] == ["node-1"]
    h.pool.ledger.finish()
    rows = {r["node"]: r for r in h.pool.ledger.summary()["nodes"]}
    assert rows["node-1"]["market"] == "on-demand" and rows["node-1"]["usd_per_hour"] == 8.0  # priced on-demand


def test_repeated_preemptions_move_new_work_to_on_demand(s):
    w = ScriptedWorker.configure()
    h = _elastic(s.model_copy(update={"gpus": 2, "fallback_after_preemptions": 2}), w)
    rt = h.rt
    spot = [rt.add_node(gpus=1, labels=GPU), rt.add_node(gpus=1, labels=GPU)]
    rt.add_node(gpus=2, resources={"s2v_ondemand": 2}, labels={"s2v-price-key": "gpu-node", "s2v-market": "on-demand"})
    for t, node in ((1.5, spot[0]), (2.5, spot[1])):
        rt.at(t, rt.notice, node, interruption="terminate at +120 s")
    h.run([plan("a", 6), plan("b", 6)])
    assert sorted(h.ready) == ["a", "b"]
    assert "2 preemption(s) in 30 min" in h.pool.ondemand_reason and h.pool.leave_spot
    assert {s_.ondemand for s_ in h.pool.slots if s_.state is not SlotState.RETIRED} <= {True}


# ---------- spot notices ----------

def test_an_interruption_drains_the_actor_its_chain_moves_on_and_the_notice_clears(s):
    """Three spot nodes; A gets an interruption notice mid-chain that passes with the node alive: A refuses its next
    clip, a replacement GPU is asked for at once, A's chain goes on elsewhere, A works again once the notice passed
    and the replacement, not needed after all, is given back. Nothing is rendered twice; no job counts an error."""
    w = ScriptedWorker.configure()
    h = _elastic(s.model_copy(update={"gpus": 3}), w)
    rt = h.rt
    a, b, c = (rt.add_node(gpus=1, labels=GPU) for _ in range(3))
    rt.at(1.5, rt.notice, a, interruption="terminate in 2 min")
    rt.at(6.0, rt.notice, a)  # it passes with the node alive
    h.run([plan(f"j{i}", 4) for i in range(6)])
    assert sorted(h.ready) == [f"j{i}" for i in range(6)]
    slot_a = next(e.slot for e in h.kinds("ready") if e.node == a)
    drain = next(e for e in h.kinds("draining") if e.slot == slot_a)
    cleared = next(e for e in h.kinds("cleared") if e.slot == slot_a)
    preempted = h.kinds("preempted")
    assert 1.5 < drain.t < 3 and 6 <= cleared.t < 8 and len(preempted) == 1
    assert len(h.pool.slots) == 4 and [{"GPU": 1}] * 4 in rt.requests  # a replacement was asked for at the notice…
    assert any("surplus" in e.detail for e in h.kinds("retired"))  # …and given back once A was usable again
    assert [e for e in h.kinds("assign") if e.slot == slot_a and e.t >= cleared.t]  # A took chains again
    assert len(w.starts) == len(w.saved) == 24  # A refused before rendering: nothing done twice
    assert all(j.attempts == 0 for j in h.sched.jobs.values()) and sum(j.preemptions for j in h.sched.jobs.values()) == 1


def test_an_early_warning_lets_the_actor_finish_its_chain_and_start_no_new_one_until_it_passes(s):
    """Node A gets an early warning (an AWS rebalance recommendation) mid-chain: it finishes that chain, takes
    no new one while warned (node B renders the queue), and works again once the warning passes."""
    w = ScriptedWorker.configure()
    rt = InProcessRuntime(w, gpus=None)
    a, _ = rt.add_node(gpus=1), rt.add_node(gpus=1)
    rt.at(0.5, rt.notice, a, warning="rebalance recommendation")
    rt.at(10.0, rt.notice, a)
    h = Harness(s, s.work, runtime=rt, worker=w).run([plan(f"j{i}", 3) for i in range(6)])
    assert sorted(h.ready) == [f"j{i}" for i in range(6)]
    slot_a = next(e.slot for e in h.kinds("ready") if e.node == a)
    warned = next(e for e in h.kinds("warned") if e.slot == slot_a)
    cleared = next(e for e in h.kinds("cleared") if e.slot == slot_a)
    assert warned.t < 3.5 <= cleared.t  # warned while its first chain ran, cleared after the warning passed
    assert not [e for e in h.kinds("assign") if e.slot == slot_a and warned.t < e.t < cleared.t]
    first = [e for e in h.kinds("assign") if e.slot == slot_a][0]
    assert [c for j, _, c, act in w.saved if j == first.job] == [0, 1, 2]  # it finished the chain it had
    assert [e for e in h.kinds("assign") if e.slot == slot_a and e.t >= cleared.t]


# ---------- the budget ----------

def test_the_budget_stops_new_chains_and_says_why(s):
    ss = s.model_copy(update={"budget_usd": 0.01, "price_per_gpu_hour": 3.6, "seconds_per_clip": {"draft": 2.0}})
    # 1 USD per 1,000 GPU-seconds; a 2-clip chain is expected to cost 4 s = $0.004: two fit, the third does not
    w = ScriptedWorker.configure(clip_s=2.0)
    h = Harness(ss, s.work, worker=w).run([plan(f"j{i}", 2) for i in range(4)])
    assert len(h.ready) == 2 and set(h.failed) <= {"j2", "j3"}
    assert h.sched.stop_reason.startswith("budget $0.01 reached") and "GPU-seconds" in h.sched.stop_reason
    assert len(w.starts) == 4  # nothing of the jobs past the budget was rendered


# ---------- sizing from a launcher config ----------

def test_config_gpu_limit_reads_the_launcher_config(tmp_path):
    """--gpus unset on a launcher cluster: the most actors its config allows (global max_workers binds); the same
    arithmetic is what `render --cluster` asks for by default."""
    import yaml

    from orchestrator.remote.forward import default_gpus
    from orchestrator.render.pool import config_gpu_limit

    cfg = {"max_workers": 5, "head_node_type": "head",
           "available_node_types": {"head": {"resources": {"CPU": 4, "GPU": 0}, "max_workers": 0},
                                    "gpu_spot": {"resources": {"GPU": 4}, "max_workers": 2},
                                    "gpu_ondemand": {"resources": {"GPU": 1}, "max_workers": 10}}}
    p = tmp_path / "bootstrap.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert config_gpu_limit(1, str(p)) == 2 * 4 + 3 * 1 == default_gpus(cfg)
    assert config_gpu_limit(2, str(p)) == 2 * 2  # a 1-GPU node cannot hold a 2-GPU actor
    assert config_gpu_limit(1, str(tmp_path / "missing.yaml")) is None
    assert default_gpus({"available_node_types": {}}) == 1
