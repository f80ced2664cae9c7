"""The cloud's own clock for a cluster's nodes: one small reader per provider lists every instance the cluster
launched (failed and terminated ones too, as long as the provider still lists them) with its launch and end
times, and a tracker remembers the ones a provider stops listing once they are gone."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

# Ray's launcher tags (AWS) / labels (GCP) every instance with these (ray.autoscaler.tags)
CLUSTER_TAG, KIND_TAG, TYPE_TAG = "ray-cluster-name", "ray-node-type", "ray-user-node-type"
AWS_ENDED = {"shutting-down", "terminated", "stopping", "stopped"}
GCP_ENDED = {"STOPPING", "TERMINATED", "SUSPENDING", "SUSPENDED"}  # GCE's TERMINATED is "stopped": no vCPU billing
ENDED = AWS_ENDED | GCP_ENDED | {"gone"}  # states that bill no compute any more


@dataclass(frozen=True)
class Instance:
    """One instance as its provider reports it; times in unix seconds."""

    id: str
    node_type: str | None  # the config's node type (ray-user-node-type), None when the provider has no tag
    instance_type: str  # EC2 instance type, GCE machine type, RunPod price key
    market: str  # "spot" or "on-demand", as launched (a refused spot bid is on-demand)
    zone: str | None
    launched: float
    terminated: float | None  # None while it runs (or bills: a stopped GCE disk is not counted here)
    state: str
    head: bool = False
    end_source: str | None = None  # "provider": the provider's own time; "last seen": gone between two reads
    usd_per_hour: float | None = None  # the provider's own price for it, where it says (RunPod costPerHr)

    def hours(self, since: float | None = None, until: float | None = None) -> float:
        """Hours billed inside [since, until] (the whole life without bounds; until defaults to now)."""
        now = time.time() if until is None else until
        end = now if self.terminated is None else min(self.terminated, now)
        start = self.launched if since is None else max(self.launched, since)
        return max(0.0, end - start) / 3600.0

    def row(self) -> dict[str, Any]:
        return asdict(self)


class NodeClock(Protocol):
    """What each provider's reader does: every instance of one cluster it still lists."""

    provider: str

    def instances(self) -> list[Instance]: ...


class Tracker:
    """Instances across reads: one a provider stops listing (GCE and RunPod drop deleted ones) keeps its launch and
    ends when it was last seen listed (at most one read interval late, said as end_source 'last seen')."""

    def __init__(self, clock: NodeClock, known: list[Instance] | None = None) -> None:
        self.clock = clock
        self.known: dict[str, Instance] = {i.id: i for i in known or []}
        self.last_read: float | None = None

    def read(self, now: float | None = None) -> list[Instance]:
        now = time.time() if now is None else now
        listed = {i.id: self._ended(i, now) for i in self.clock.instances()}
        for iid, old in list(self.known.items()):
            if iid not in listed and old.terminated is None:
                self.known[iid] = replace(old, terminated=self.last_read or now, state="gone",
                                          end_source="last seen")
        self.known.update(listed)
        self.last_read = now
        return list(self.known.values())

    def _ended(self, i: Instance, now: float) -> Instance:
        """An instance listed as ended with no time of its own: the end we knew, else our last read of it alive."""
        if i.terminated is not None or i.state not in ENDED:
            return i
        old = self.known.get(i.id)
        if old is not None and old.terminated is not None:
            return replace(i, terminated=old.terminated, end_source=old.end_source)
        return replace(i, terminated=self.last_read if old is not None and self.last_read else now,
                       end_source="last seen")


def idle_tails(cfg: dict[str, Any]) -> dict[str, float | None]:
    """Seconds a node stays up after the work ends: workers the autoscaler's idle_timeout_minutes, the head
    metadata.s2v.idle_stop_minutes (autostop; None: never, it runs until `s2v cluster down`)."""
    from infra.clusters.config import s2v_meta

    stop = s2v_meta(cfg).get("idle_stop_minutes")
    return {"worker": float(cfg.get("idle_timeout_minutes", 5)) * 60.0,
            "head": float(stop) * 60.0 if stop else None}


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def cost_doc(instances: list[Instance], node_price, *, until: float, since: float | None = None,
             tails: dict[str, float | None] | None = None) -> dict[str, Any]:
    """Each instance's hours in [since, until] × its price (the provider's own where it says one, else
    node_price(instance_type, market)): what is measured; and, for instances still up at `until`, the idle tail
    they will bill before the autoscaler (workers) or autostop (head) takes them: what is projected."""
    rows, measured, hours, unpriced = [], 0.0, 0.0, []
    tail_rows, tail_usd = [], 0.0
    for i in sorted(instances, key=lambda i: (not i.head, i.launched)):
        h = i.hours(since, until)
        price, source = (i.usd_per_hour, "provider") if i.usd_per_hour is not None else \
            (node_price(i.instance_type, i.market), "price table")
        if price is None:
            source = None
            unpriced.append(f"{i.id} ({i.instance_type}, {i.market})")
        hours += h
        measured += h * (price or 0.0)
        rows.append({"id": i.id, "node_type": i.node_type, "head": i.head, "instance_type": i.instance_type,
                     "market": i.market, "zone": i.zone, "state": i.state, "launched": _iso(i.launched),
                     "terminated": _iso(i.terminated), "end_source": i.end_source, "hours": round(h, 6),
                     "usd_per_hour": price, "price_source": source,
                     "cost_usd": None if price is None else round(h * price, 6)})
        alive = i.launched <= until and (i.terminated is None or i.terminated > until)
        tail = (tails or {}).get("head" if i.head else "worker")
        if alive and tails is not None:
            if tail is None:
                tail_rows.append({"id": i.id, "hours": None, "cost_usd": None,
                                  "why": "idle_stop_minutes is 0: the head runs until `s2v cluster down`"})
            else:
                usd = None if price is None else tail / 3600.0 * price
                tail_usd += usd or 0.0
                tail_rows.append({"id": i.id, "hours": round(tail / 3600.0, 6),
                                  "cost_usd": None if usd is None else round(usd, 6),
                                  "why": "autostop's idle_stop_minutes" if i.head else "the autoscaler's "
                                  "idle_timeout_minutes"})
    doc = {"measured": {"what": "each instance from the provider's launch time to its end (or now), inside the "
                                "window; failed nodes and boot/setup included",
                        "node_hours": round(hours, 6), "cost_usd": round(measured, 6), "priced": not unpriced},
           "projected": {"what": "the idle tail of the instances still up: how long each stays billed once work "
                                 "ends, at its price", "cost_usd": round(tail_usd, 6), "nodes": tail_rows},
           "nodes": rows, "had": had(instances), "since": _iso(since), "until": _iso(until)}
    if unpriced:
        doc["measured"]["note"] = (f"no price for {len(unpriced)} instance(s): {', '.join(unpriced)}; their hours "
                                   "are not in cost_usd (set node_prices for their type)")
    return doc


def had(instances: list[Instance]) -> list[dict[str, Any]]:
    """What the cluster actually got: instances by node type, instance type, zone and market, with counts."""
    counts: dict[tuple, int] = {}
    for i in instances:
        k = (i.node_type or "?", i.instance_type, i.zone or "?", i.market)
        counts[k] = counts.get(k, 0) + 1
    return [{"node_type": k[0], "instance_type": k[1], "zone": k[2], "market": k[3], "count": n}
            for k, n in sorted(counts.items())]


def asked(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """What `init` asked for (metadata.s2v.capacity), or the node types' own types when it recorded none."""
    meta = (cfg.get("metadata") or {}).get("s2v") or {}
    if meta.get("capacity"):
        return {k: v for k, v in meta["capacity"].items() if k != "offered"}
    field = {"aws": "InstanceType", "gcp": "machineType"}.get(str((cfg.get("provider") or {}).get("type")))
    return {"asked": {n: {"type": (nt.get("node_config") or {}).get(field) if field else
                          (nt.get("labels") or {}).get("s2v-price-key"),
                          "market": (nt.get("labels") or {}).get("s2v-market")}
                      for n, nt in (cfg.get("available_node_types") or {}).items()}} if cfg else None
