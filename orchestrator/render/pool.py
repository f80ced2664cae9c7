"""The run's render actors, one per GPU: sized to the work and the cluster, grown as nodes join, shrunk as they
go, on-demand once spot fails us, and given back at the end so the cluster can scale down."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from core.settings import Settings
from orchestrator.render.costs import NodeLedger, cluster_clock
from orchestrator.render.events import EventLog
from orchestrator.render.runtime import ActorLost, CallFailed, NotReady, Runtime
from orchestrator.render.slots import COUNTED, WAITING, Slot, SlotState

S = SlotState
NOTICE_PROBE_S = 1.0  # how often a warned or draining actor is asked whether its notice passed

log = logging.getLogger("s2v.pool")
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where Ray's launcher leaves the cluster config on the head
NODES_EVERY_S = 1.0
INFO_WAIT_S = 10.0


def config_gpu_limit(gpus_per_actor: int, path: str | None = None) -> int | None:
    """Most actors the launcher's cluster config allows (head GPUs + GPU worker types within max_workers); None
    when this machine holds no such config (a fixed cluster, or a driver outside the head)."""
    import yaml

    from infra.clusters.config import gpu_capacity

    p = Path(os.path.expanduser(path or BOOTSTRAP_CONFIG))
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return gpu_capacity(cfg, gpus_per_actor)


class Pool:
    """Owns the actors and their slots. Static on the embedded local Ray (N logical GPUs → N actors, as many as at
    the start); elastic when the run joined a cluster: it asks the autoscaler for min(chains left, target) GPUs,
    creates that many actors (pending ones are Ray's own demand and never count as workers), retires surplus ones,
    asks for a replacement the moment a node gets an interruption notice, and releases everything at the end.
    What it does goes to `events` (the run's one EventLog)."""

    def __init__(self, settings: Settings, runtime: Runtime, events: EventLog, backends: tuple[str, ...] = (), *,
                 elastic: bool | None = None):
        from infra.clusters.config import ONDEMAND_RESOURCE

        self.settings, self.rt, self.events, self.backends = settings, runtime, events, backends
        self.elastic = bool(settings.address) if elastic is None else elastic
        self.ondemand_resource = ONDEMAND_RESOURCE
        # an on-demand node type exists on our cluster configs (an autoscaler can add one) or is already here
        self.can_ondemand = self.elastic or runtime.has_resource(ONDEMAND_RESOURCE)
        self.ondemand_reason: str | None = None  # set: new actors ask for the on-demand node type
        self.leave_spot = False  # set after too many preemptions: idle spot actors are replaced as well
        self.preempt_times: list[float] = []  # within the fallback window
        self.preemptions = 0
        self.slots: list[Slot] = []
        self.target, self.target_source = self._target()
        self.static_n = self.target
        self.requested: list | None = None
        self.short_since: float | None = None
        self.retiring: list[tuple[Slot, object, float]] = []  # (slot, info ref, since): killed once answered
        self.infos: list[dict] = []
        self._alive: set[str] = set()
        self._alive_at = -float("inf")
        self.ledger = NodeLedger(settings, self.elastic, runtime, **(cluster_clock(settings) if self.elastic else {}))
        self.peak_workers = 0

    def note(self, kind: str, detail: str | None = None, slot: Slot | None = None) -> None:
        self.events.add(kind, slot=None if slot is None else self.slots.index(slot),
                        node=None if slot is None else slot.node, detail=detail)

    # ---------- size ----------
    def _target(self) -> tuple[int, str]:
        g = self.settings.gpus_per_actor
        have = int(self.rt.cluster_gpus() // g)
        if not self.elastic:
            return max(1, have or (self.settings.gpus or 1) // g), "local GPUs"
        limit = config_gpu_limit(g)
        if self.settings.gpus:
            n = max(1, self.settings.gpus // g)
            return (min(n, limit), "--gpus, capped by the cluster config") if limit else (n, "--gpus")
        if limit:
            return limit, "cluster config maximum"
        return max(1, have), "GPUs in the cluster (no autoscaler config on this machine)"

    def start(self, chains: int) -> None:
        self.ledger.poll(force=True)
        n = self.static_n if not self.elastic else min(self.target, chains)
        for _ in range(n):
            self.add()
        self.note("pool", f"target {self.target} actors ({self.target_source}); {len(self.slots)} started")
        self._request()

    def add(self, ondemand: bool | None = None) -> Slot:
        ondemand = self.ondemand_reason is not None if ondemand is None else ondemand
        res = {self.ondemand_resource: self.settings.gpus_per_actor} if ondemand else None
        handle = self.rt.start_actor(self.settings, self.backends, res)
        slot = Slot(handle, probe=self.rt.call(handle, "ping"), ondemand=ondemand, clock=self.rt.now)
        self.slots.append(slot)
        return slot

    def retire(self, slot: Slot, reason: str) -> None:
        """Out of the run: ask what it did (for the report), then kill it for good."""
        answered = slot.state not in WAITING and slot.state is not SlotState.BROKEN
        slot.to(SlotState.RETIRED, reason)
        self.note("retired", reason, slot)
        slot.inflight.clear()
        slot.probe = None
        if answered:
            self.retiring.append((slot, self.rt.call(slot.handle, "info"), self.rt.now()))
        else:
            self._kill(slot)

    def replace(self, slot: Slot, reason: str) -> Slot:
        self.retire(slot, reason)
        return self.add()

    def workers(self) -> int:
        return sum(1 for s in self.slots if s.state in (SlotState.IDLE, SlotState.BUSY, SlotState.WARNED))

    def capacity(self) -> dict:
        """For the run's result: what the pool aimed for, what it got, and whether and why it left spot."""
        return {"target": self.target, "target_source": self.target_source, "elastic": self.elastic,
                "peak_workers": self.peak_workers, "actors_started": len(self.slots),
                "ondemand": self.ondemand_reason, "notices": self.preemptions}

    # ---------- each scheduler tick ----------
    def tick(self, chains_left: int) -> None:
        now = self.rt.now()
        self.peak_workers = max(self.peak_workers, self.workers())
        self._reap(now)
        self.ledger.poll()
        for s in [s for s in self.slots if s.state is SlotState.DRAINING]:
            # its replacement was made at the notice: nothing is lost by letting it go
            if self.leave_spot and not s.ondemand:
                self.retire(s, "under notice while leaving spot after repeated preemptions")
            elif s.node and not self.node_alive(s.node):
                self.retire(s, "its node is gone (a replacement was asked for at the notice)")
        if self.leave_spot:
            for s in [s for s in self.slots if not s.ondemand and s.takes_chains and chains_left]:
                self.replace(s, "leaving spot after repeated preemptions")
        self._resize(chains_left)
        if self.elastic:
            self._spot_wait(now)
        self._request()

    def _resize(self, chains_left: int) -> None:
        """Elastic: min(target, chains left) actors. Static: as many as at the start (a notice's replacement
        that turned out not to be needed is the surplus)."""
        desired = min(self.target, chains_left) if self.elastic else self.static_n
        counted = [s for s in self.slots if s.state in COUNTED]
        for _ in range(desired - len(counted)):
            self.add()
        surplus = len(counted) - desired
        if surplus > 0:
            # pending demand first (newest first), then idle actors: never one with a chain
            order = sorted((s for s in counted if s.state in WAITING), key=lambda s: -s.since)
            order += [s for s in counted if s.takes_chains]
            for s in order[:surplus]:
                self.retire(s, "surplus: fewer chains left than actors")

    def _spot_wait(self, now: float) -> None:
        """Spot capacity the run asked for that has not come within spot_wait_s: new actors go on-demand."""
        if self.ondemand_reason is not None or not self.can_ondemand:
            return
        waiting = [s for s in self.slots if s.state in WAITING and not s.ondemand]
        unplaced = self._unplaced() if waiting else 0  # a GCS call: not on every turn of a busy loop
        if unplaced <= 0:
            self.short_since = None
            return
        if self.short_since is None:
            self.short_since = now
        if now - self.short_since < self.settings.spot_wait_s:
            return
        self.ondemand_reason = (f"{unplaced} GPU(s) of spot capacity did not come within {self.settings.spot_wait_s:.0f}"
                                f" s: new actors ask for the on-demand node type")
        log.warning("%s", self.ondemand_reason)
        self.note("ondemand", self.ondemand_reason)
        for s in sorted(waiting, key=lambda s: -s.since)[:unplaced]:
            self.replace(s, "spot capacity did not come: replaced by an on-demand actor")

    def _unplaced(self) -> int:
        """Actors no GPU of the cluster can hold now (our GPUs needed beyond the cluster's; a dedicated cluster)."""
        g = self.settings.gpus_per_actor
        need = g * sum(1 for s in self.slots if s.state not in (SlotState.RETIRED, SlotState.BROKEN))
        return max(0, math.ceil((need - self.rt.cluster_gpus()) / g))

    def _request(self) -> None:
        """Ask the autoscaler for a GPU bundle per actor we hold or wait for (draining ones have their
        replacement counted already); only when it changed."""
        if not self.elastic:
            return
        g = self.settings.gpus_per_actor
        bundles = [{"GPU": g, self.ondemand_resource: g} if s.ondemand else {"GPU": g}
                   for s in self.slots if s.state in COUNTED or s.state is SlotState.DRAINING]
        if bundles != self.requested:
            self.rt.request_gpus(bundles)
            self.requested = bundles

    def node_alive(self, node: str) -> bool:
        if self.rt.now() - self._alive_at > NODES_EVERY_S:
            self._alive = self.rt.alive_nodes()
            self._alive_at = self.rt.now()
        return node in self._alive

    # ---------- preemption ----------
    def draining(self, slot: Slot, why: str) -> None:
        """An interruption notice on its node: it refuses clips; a replacement is asked for at once."""
        slot.to(S.DRAINING, why)
        slot.retry_at = self.rt.now() + NOTICE_PROBE_S
        self.note("draining", why, slot)
        self.preempted()  # first: after too many, the replacement goes on-demand
        self.add()
        self._request()

    def warned(self, slot: Slot, why: str) -> None:
        """An early warning on its node: it finishes its chain (if any) and starts no new one until it passes."""
        slot.to(S.WARNED)
        slot.retry_at = self.rt.now() + NOTICE_PROBE_S
        self.note("warned", why, slot)

    def preempted(self) -> None:
        now = self.rt.now()
        window = self.settings.fallback_window_min * 60
        self.preempt_times = [t for t in self.preempt_times if now - t <= window] + [now]
        self.preemptions += 1
        if (not self.leave_spot and self.can_ondemand
                and len(self.preempt_times) >= self.settings.fallback_after_preemptions):
            self.leave_spot = True
            self.ondemand_reason = (f"{len(self.preempt_times)} preemption(s) in {self.settings.fallback_window_min:.0f}"
                                    " min: new work goes to the on-demand node type")
            log.warning("%s", self.ondemand_reason)
            self.note("ondemand", self.ondemand_reason)

    # ---------- the actors' health: probes, notices ----------
    def probed(self, slot: Slot, ref) -> None:
        """A ping (starting, lost) or notices call (warned, draining) answered."""
        slot.probe = None
        now = self.rt.now()
        try:
            answer = self.rt.get(ref, timeout=10)
        except CallFailed as e:  # ping raised: the actor could not set itself up (no CUDA, no weights…)
            self.broken(slot, e.cause)
            return
        except ActorLost as e:
            if e.init_failed:
                self.broken(slot, e.error)
            elif slot.state is S.DRAINING:
                self.retire(slot, "died under notice (its replacement was asked for at the notice)")
            else:
                slot.retry_at = now + 1.0  # restarting: ask again
            return
        except NotReady:
            slot.retry_at = now + 1.0
            return
        if slot.state in WAITING:
            slot.node = answer.get("node") if isinstance(answer, dict) else slot.node
            slot.to(S.IDLE)
            self.note("ready", "answered", slot)
            return
        slot.node = answer.get("node", slot.node)
        slot.retry_at = now + NOTICE_PROBE_S
        if answer.get("interruption"):
            if slot.state is S.WARNED and slot.chain is None:
                self.draining(slot, answer["interruption"])
        elif slot.state is S.DRAINING:
            slot.to(S.IDLE)
            self.note("cleared", "interruption notice passed; the node survived", slot)
        elif slot.state is S.WARNED and not answer.get("warning"):
            slot.to(S.BUSY if slot.chain is not None else S.IDLE)
            self.note("cleared", "early warning passed", slot)

    def broken(self, slot: Slot, err) -> None:
        reason = f"{type(err).__name__}: {err}"
        log.error("a render actor could not start: %s", reason)
        slot.to(S.BROKEN, reason)
        self.note("broken", reason, slot)
        self._kill(slot)

    def probe_all(self) -> None:
        now = self.rt.now()
        for s in self.slots:
            if s.probe is not None or now < s.retry_at:
                continue
            if s.state in WAITING:
                s.probe = self.rt.call(s.handle, "ping")
            elif s.state is S.DRAINING or (s.state is S.WARNED and not s.inflight):
                s.probe = self.rt.call(s.handle, "notices")

    # ---------- end ----------
    def _reap(self, now: float, wait: bool = False) -> None:
        keep = []
        for slot, ref, since in self.retiring:
            ready = self.rt.wait([ref], timeout=INFO_WAIT_S if wait else 0)
            if ready or now - since > INFO_WAIT_S or wait:
                try:
                    self.infos.append({**self.rt.get(ref, timeout=1), "retired": slot.reason})
                except Exception:  # noqa: BLE001 - an actor that cannot answer has nothing to report
                    pass
                self._kill(slot)
            else:
                keep.append((slot, ref, since))
        self.retiring = keep

    def _kill(self, slot: Slot) -> None:
        self.rt.kill(slot.handle, restart=False)

    def close(self) -> list[dict]:
        """Infos of every actor that worked (retired ones included), then kill them all and drop the request.
        The ledger goes on: the run closes it once stitching is over (the head's time counts too)."""
        live = [s for s in self.slots if s.state is not SlotState.RETIRED]
        asked = {self.rt.call(s.handle, "info"): s for s in live if s.state is not SlotState.STARTING}
        ready = self.rt.wait(list(asked), timeout=15, every=True) if asked else []
        for ref, s in asked.items():
            try:
                self.infos.append(self.rt.get(ref, timeout=1) if ref in ready else {"dead": True, "state": s.state.value})
            except Exception:  # noqa: BLE001 - a dead or restarting actor has no info to give
                self.infos.append({"dead": True, "state": s.state.value})
        self._reap(self.rt.now(), wait=True)
        for s in live:
            self._kill(s)
        if self.elastic:
            self.rt.request_gpus([])
        return self.infos
