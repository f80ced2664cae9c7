"""Pure pieces of the runtime, without Ray: the actor state machine's edges, node-hour cost arithmetic, and the
budget check preferring a cluster's real spend over the GPU-second estimate."""

from __future__ import annotations


import pytest

from core.settings import NodePrice, Settings
from orchestrator.render.costs import NodeLedger, NodeUse
from orchestrator.render.inprocess import InProcessRuntime
from orchestrator.render.scripted_worker import ScriptedWorker
from orchestrator.render.slots import ALLOWED, IllegalTransition, Slot, SlotState
from policy import Harness

S = SlotState


def test_every_allowed_edge_works_and_nothing_else_does():
    for a in S:
        for b in S:
            slot = Slot(handle=None, state=a)
            if b is a:
                continue
            if b in ALLOWED[a]:
                slot.to(b)
                assert slot.state is b and slot.history[-1][1:] == (a.value, b.value)
            else:
                with pytest.raises(IllegalTransition):
                    slot.to(b)
                assert slot.state is a
    assert not ALLOWED[S.RETIRED]  # terminal


def test_assign_and_release_keep_a_warned_slot_warned():
    slot = Slot(handle=None, state=S.IDLE)
    slot.assign("chain")
    assert slot.state is S.BUSY and slot.chain == "chain"
    slot.to(S.WARNED)
    assert slot.release() == "chain" and slot.state is S.WARNED and not slot.takes_chains
    with pytest.raises(IllegalTransition):
        slot.assign("another")  # a warned slot starts no chain
    slot.to(S.IDLE)
    assert slot.takes_chains


def _ledger(prices: dict) -> NodeLedger:
    s = Settings(node_prices=prices)
    led = NodeLedger(s, True, InProcessRuntime(ScriptedWorker), started=1000.0)
    led.ended = 1000.0 + 7200  # a two-hour run
    led.nodes = {
        "head": NodeUse("head", start=0.0, end=None, gpus=0, key="m5.large", market="on-demand", head=True),
        "g1": NodeUse("g1", start=1000.0 + 600, end=None, gpus=8, key="p5.48xlarge", market="spot"),
        "g2": NodeUse("g2", start=1000.0, end=1000.0 + 3600, gpus=8, key="p5.48xlarge", market="on-demand"),
    }
    return led


def test_node_hours_are_priced_per_node_type_and_market():
    led = _ledger({"m5.large": NodePrice(on_demand=0.1, spot=0.04), "p5.48xlarge": NodePrice(on_demand=98.0, spot=40.0)})
    doc = led.summary()
    rows = {r["node"]: r for r in doc["nodes"]}
    # the head counts from the run's start, g1 from when it joined, g2 until it went
    assert rows["head"]["hours"] == 2.0 and rows["g1"]["hours"] == pytest.approx(6600 / 3600) and rows["g2"]["hours"] == 1.0
    assert doc["cost_usd"] == pytest.approx(2 * 0.1 + 6600 / 3600 * 40.0 + 1 * 98.0)
    assert doc["node_hours"] == pytest.approx(2 + 6600 / 3600 + 1) and doc["priced"] and "note" not in doc
    assert led.spent() == pytest.approx(doc["cost_usd"])
    assert led.gpu_price_per_s("g1") == pytest.approx(40.0 / 8 / 3600)  # a job's GPU-second on that node


def test_a_node_without_price_is_said_never_counted_as_zero():
    led = _ledger({"p5.48xlarge": NodePrice(on_demand=98.0, spot=40.0)})
    doc = led.summary()
    assert not doc["priced"] and "m5.large" in doc["note"] and led.spent() is None
    assert doc["cost_usd"] == pytest.approx(6600 / 3600 * 40.0 + 98.0)  # what is known, with the note


def test_local_runs_keep_gpu_second_estimates():
    led = NodeLedger(Settings(price_per_gpu_hour=3.6), False, InProcessRuntime(ScriptedWorker))
    assert led.spent() is None and led.summary()["source"] == "gpu-seconds"
    assert led.gpu_price_per_s("anything") == pytest.approx(0.001)


def test_budget_uses_the_clusters_real_spend(tmp_path):
    """$400 budget; the jobs' GPU-seconds are cheap but the cluster already spent ~$441 in node-hours (head and
    idle nodes included): no new chain starts, and the reason says the spend came from node-hours."""
    from types import SimpleNamespace

    from orchestrator.render.chains import Chain

    s = Settings(budget_usd=400.0, node_prices={"p5.48xlarge": NodePrice(on_demand=98.0, spot=40.0),
                                                "m5.large": NodePrice(on_demand=0.1, spot=0.04)})
    sched = Harness(s, str(tmp_path)).sched
    now = sched.rt.time()  # the runtime's wall clock: what the ledger measures node-hours against
    led = sched.pool.ledger = NodeLedger(s, True, sched.rt, started=now - 5 * 3600)
    led.nodes = {"head": NodeUse("head", now - 6 * 3600, None, 0, "m5.large", "on-demand", head=True),
                 "g1": NodeUse("g1", now - 4.5 * 3600, None, 8, "p5.48xlarge", "on-demand")}
    chain = Chain(plan=SimpleNamespace(job=SimpleNamespace(backend="draft"), expected_clip_s=None),
                  scene=SimpleNamespace(clips=[0, 0]))
    why = sched._over_budget(chain)
    assert why is not None and "(node-hours)" in why and "budget $400.00 reached" in why
    led.nodes["g1"].start = now - 60  # a minute of the GPU node: well within budget
    assert sched._over_budget(chain) is None


def test_a_chain_advances_over_saved_clips_in_any_report_order(tmp_path):
    """ray.wait hands back whichever result is ready: clip 1's report may be read before clip 0's. The chain
    advances only over contiguous markers, and reaches the end once both are known (it once stalled there)."""
    from types import SimpleNamespace

    from orchestrator.render.chains import Chain

    sched = Harness(Settings(), str(tmp_path)).sched
    chain = sched.chains[("j", 0)] = Chain(plan=SimpleNamespace(job=SimpleNamespace(id="j", backend="draft")),
                                           scene=SimpleNamespace(index=0, clips=[0, 0, 0]))
    sched._saved("j", 0, 1)
    assert chain.next_done == 0  # clip 0's marker is not known yet: never skipped
    sched._saved("j", 0, 0)
    sched._saved("j", 0, 0)  # a repeated report changes nothing
    assert chain.next_done == 2
    sched._saved("j", 0, 2)
    assert chain.next_done == 3 and [e.clip for e in sched.events.of("done")] == [0, 1, 2]
