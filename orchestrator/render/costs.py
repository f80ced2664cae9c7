"""What a run on a cluster cost: node-hours of every node alive during it (head and idle nodes included), each
priced by its node type's labels; local runs keep the GPU-second estimate."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger("s2v.costs")
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


def read_nodes() -> list[NodeUse]:
    """Every node the GCS knows (dead ones keep their start and end times), without the dashboard."""
    import ray

    gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)
    out = []
    for nid, info in gcs.get_all_node_info(timeout=10).items():
        labels = dict(info.labels)
        out.append(NodeUse(node_id=nid.hex(), start=info.start_time_ms / 1000.0,
                           end=info.end_time_ms / 1000.0 if info.end_time_ms else None,
                           gpus=float(info.resources_total.get("GPU", 0.0)), key=labels.get(PRICE_KEY),
                           market=labels.get(MARKET), head=bool(info.is_head_node)))
    return out


def _observed(seen: dict[str, NodeUse]) -> list[NodeUse]:
    """The same from ray.nodes() (public API, no times): a node starts and ends when this ledger saw it so."""
    import ray

    now = time.time()
    for n in ray.nodes():
        nid = n["NodeID"]
        labels = n.get("Labels") or {}
        use = seen.get(nid)
        if use is None:
            use = seen[nid] = NodeUse(nid, now, None, float(n.get("Resources", {}).get("GPU", 0.0)),
                                      labels.get(PRICE_KEY), labels.get(MARKET),
                                      "node:__internal_head__" in n.get("Resources", {}))
        if not n.get("Alive", True) and use.end is None:
            use.end = now
    return list(seen.values())


class NodeLedger:
    """Node-hours × node price over the run's window; `enabled` only when the run joined a cluster."""

    def __init__(self, settings, enabled: bool, started: float | None = None):
        self.settings, self.enabled = settings, enabled
        self.started = time.time() if started is None else started
        self.ended: float | None = None
        self.nodes: dict[str, NodeUse] = {}
        self._seen: dict[str, NodeUse] = {}
        self._last = 0.0
        self._gcs_ok = True
        self._unknown: set[str] = set()

    def poll(self, force: bool = False) -> None:
        if not self.enabled or (not force and time.monotonic() - self._last < self.settings.cost_poll_s):
            return
        self._last = time.monotonic()
        try:
            nodes = read_nodes() if self._gcs_ok else _observed(self._seen)
        except Exception as e:  # noqa: BLE001 - private GCS client changed or unreachable: the public view
            log.info("node table through the GCS client failed (%s); timing nodes as observed", e)
            self._gcs_ok = False
            nodes = _observed(self._seen)
        for n in nodes:
            if n.end is None or n.end > self.started:  # alive at some point of the run
                self.nodes[n.node_id] = n

    def finish(self) -> None:
        self.poll(force=True)
        self.ended = time.time()

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
        if not self.enabled or not self.nodes:
            return None
        until = self.ended or time.time()
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
        until = self.ended or time.time()
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
        doc = {"source": "node-hours", "node_hours": round(hours, 6), "cost_usd": round(cost, 6),
               "priced": not unpriced, "nodes": rows}
        if unpriced:
            doc["note"] = (f"no price for {len(unpriced)} node(s): {', '.join(unpriced)}; their hours are not in "
                           "cost_usd (set node_prices for their s2v-price-key)")
        return doc
