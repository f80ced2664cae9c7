"""What a run on a cluster cost: every node alive during it (head and idle nodes included) by the cloud's own
clock where the driver can read it (launch to termination, failed nodes included, plus the idle tail projected),
else by Ray's node table; each priced by its type and market. Local runs keep the GPU-second estimate."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("s2v.costs")
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where Ray's launcher leaves the cluster config on the head

PRICE_KEY, MARKET = "s2v-price-key", "s2v-market"  # Ray node labels our cluster configs set per node type


@dataclass
class NodeUse:
    """One node as the ledger saw it; start/end in unix seconds (end None while alive)."""

    node_id: str
    start: float
    end: float | None
    gpus: float
    key: str | None
    market: str | None
    head: bool = False

    def hours(self, since: float, until: float) -> float:
        end = until if self.end is None else min(self.end, until)
        return max(0.0, end - max(self.start, since)) / 3600.0


class NodeLedger:
    """Node-hours × node price over the run's window; `enabled` only when the run joined a cluster. The runtime
    gives the node table and the clocks."""

    def __init__(self, settings, enabled: bool, runtime, started: float | None = None, clock=None,
                 tails: dict | None = None, asked: dict | None = None):
        from infra.clusters.clock import Tracker

        self.settings, self.enabled, self.runtime = settings, enabled, runtime
        self.started = runtime.time() if started is None else started
        self.ended: float | None = None
        self.nodes: dict[str, NodeUse] = {}
        self._last = -float("inf")
        self._unknown: set[str] = set()
        # the cloud's clock (infra/clusters/clock.py): instances from launch to end, failed ones included
        self.tracker = Tracker(clock) if clock is not None and enabled else None
        self.tails, self.asked = tails, asked  # asked: the config's capacity request, for the report
        self.instances: list = []
        self.clock_error: str | None = None
        self._clock_last = -float("inf")

    def poll(self, force: bool = False) -> None:
        if not self.enabled or (not force and self.runtime.now() - self._last < self.settings.cost_poll_s):
            return
        self._last = self.runtime.now()
        for n in self.runtime.node_table():
            if n.end is None or n.end > self.started:  # alive at some point of the run
                self.nodes[n.node_id] = n
        if self.tracker is not None and (force or self.runtime.now() - self._clock_last >= self.settings.cost_clock_poll_s):
            self._clock_last = self.runtime.now()
            try:
                got = self.tracker.read(self.runtime.time())
            except Exception as e:  # noqa: BLE001 — a ClusterError, or a cloud library's own: Ray's table stays
                if self.clock_error is None:
                    log.warning("the cloud's clock cannot be read (%s); costs come from Ray's node table until it "
                                "can", e)
                self.clock_error = str(e)
                return
            self.clock_error = None
            self.instances = [i for i in got if i.terminated is None or i.terminated > self.started]

    def cloud(self) -> dict | None:
        """cost_doc (infra/clusters/clock.py) over the run's window, when the cloud's clock was read."""
        if not self.instances:
            return None
        from infra.clusters.clock import cost_doc

        return cost_doc(self.instances, self.settings.node_price, since=self.started,
                        until=self.ended or self.runtime.time(), tails=self.tails)

    def projected_tail(self) -> float:
        """USD the nodes still up will bill once the work ends (idle timeout × price); 0 when not known."""
        doc = self.cloud()
        return doc["projected"]["cost_usd"] if doc else 0.0

    def finish(self) -> None:
        self.poll(force=True)
        self.ended = self.runtime.time()

    def price(self, n: NodeUse) -> float | None:
        return self.settings.node_price(n.key, n.market)

    def gpu_price_per_s(self, node_id: str | None) -> float:
        """USD per GPU-second of a node: its node-hour price shared by its GPUs; else the GPU price table."""
        if self.enabled and node_id and node_id not in self.nodes and node_id not in self._unknown:
            self._unknown.add(node_id)  # joined since the last poll: read the table once more, not per clip
            self.poll(force=True)
        n = self.nodes.get(node_id or "")
        p = self.price(n) if n is not None and n.gpus else None
        if p is None:
            return self.settings.price() / 3600.0
        return p / n.gpus / 3600.0

    def mean_gpu_price_per_s(self) -> float:
        """For estimates of work not done yet: the mean GPU-second price of the live, priced GPU nodes."""
        prices = [self.gpu_price_per_s(n.node_id) for n in self.nodes.values()
                  if n.gpus and n.end is None and self.price(n) is not None]
        return sum(prices) / len(prices) if prices else self.settings.price() / 3600.0

    def spent(self) -> float | None:
        """USD so far from node-hours; None when local, or when a node of the run has no known price."""
        if not self.enabled or not (self.nodes or self.instances):
            return None
        doc = self.cloud()
        if doc is not None:
            return doc["measured"]["cost_usd"] if doc["measured"]["priced"] else None
        until = self.ended or self.runtime.time()
        total = 0.0
        for n in self.nodes.values():
            p = self.price(n)
            if p is None:
                return None
            total += n.hours(self.started, until) * p
        return total

    def summary(self) -> dict:
        """For the report: node-hours, their cost, every node's share, and what could not be priced (said)."""
        if not self.enabled:
            return {"source": "gpu-seconds", "note": "local run: cost is GPU-seconds × the GPU price table"}
        doc = self.cloud()
        if doc is not None:
            m = doc["measured"]
            out = {"source": "node-hours", "clock": self.tracker.clock.provider, "node_hours": m["node_hours"],
                   "cost_usd": m["cost_usd"], "priced": m["priced"], "measured": m, "projected": doc["projected"],
                   "nodes": doc["nodes"], "capacity": {"asked": self.asked, "had": doc["had"]}}
            if m.get("note"):
                out["note"] = m["note"]
            return out
        until = self.ended or self.runtime.time()
        rows, hours, cost, unpriced = [], 0.0, 0.0, []
        for n in sorted(self.nodes.values(), key=lambda n: (not n.head, n.start)):
            h, p = n.hours(self.started, until), self.price(n)
            hours += h
            if p is None:
                unpriced.append(f"{n.node_id[:12]} ({n.key or 'no s2v-price-key label'}, "
                                f"{n.market or 'no s2v-market label'})")
            else:
                cost += h * p
            rows.append({"node": n.node_id, "head": n.head, "gpus": n.gpus, "price_key": n.key, "market": n.market,
                         "hours": round(h, 6), "usd_per_hour": p, "cost_usd": None if p is None else round(h * p, 6)})
        doc = {"source": "node-hours", "clock": "ray", "node_hours": round(hours, 6), "cost_usd": round(cost, 6),
               "priced": not unpriced, "nodes": rows,
               "measured": {"what": "each node from when it joined Ray to when it left (or the run's end): boot, "
                                    "setup, nodes that never joined and the idle tail are not in it"
                                    + (f"; the cloud's clock could not be read: {self.clock_error}"
                                       if self.clock_error else "")}}
        if unpriced:
            doc["note"] = (f"no price for {len(unpriced)} node(s): {', '.join(unpriced)}; their hours are not in "
                           "cost_usd (set node_prices for their s2v-price-key)")
        return doc


def cluster_clock(settings, path: str | None = None) -> dict:
    """NodeLedger's clock, idle tails and what the config asked for, from the cluster config the launcher left on
    this head; {} when there is none here (a fixed cluster, a driver off the head) or settings.cost_clock is 'ray'."""
    import yaml

    if getattr(settings, "cost_clock", "auto") == "ray":
        return {}
    p = Path(os.path.expanduser(path or BOOTSTRAP_CONFIG))
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
        from infra.clusters.clock import asked, idle_tails
        from infra.clusters.clock_readers import clock_for
        from infra.clusters.config import provider_of

        if provider_of(cfg) not in ("aws", "gcp", "runpod"):  # another external provider: no clock of its own
            log.info("cluster provider %s has no cloud clock: costs come from Ray's node table", provider_of(cfg))
            return {}
        return {"clock": clock_for(cfg), "tails": idle_tails(cfg), "asked": asked(cfg)}
    except FileNotFoundError:
        return {}
    except Exception as e:  # noqa: BLE001 — an unreadable config, a provider without a clock: Ray's table it is
        log.warning("no cloud clock from %s (%s): costs come from Ray's node table", p, e)
        return {}
