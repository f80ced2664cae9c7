"""`s2v cluster cost CONFIG`: a cluster's lifetime cost by the cloud's own clock (every instance from launch to end,
failed ones included) and the idle tail still to come. Merged into the `s2v cluster` group."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from orchestrator.cli.common import CONFIG_ARG, checked, errors_to_exit, settings

app = typer.Typer()
SEEN = "instances-seen.json"  # in the cluster's state folder: instances a provider no longer lists stay counted


def node_price(s, cfg: dict):
    """USD per node-hour by (type, market): the config's metadata.s2v.prices over the settings' table, as runs see."""
    from core.settings import NodePrice

    from infra.clusters.config import s2v_meta

    table = {**s.node_prices, **{k: NodePrice.model_validate(v) for k, v in (s2v_meta(cfg).get("prices") or {}).items()}}
    return s.model_copy(update={"node_prices": table}).node_price


def read_instances(cfg: dict, state: Path) -> list:
    """The provider's instances of this cluster merged with the ones seen before (saved back for next time)."""
    from dataclasses import asdict

    from infra.clusters.clock import Instance, Tracker
    from infra.clusters.clock_readers import clock_for

    path = state / SEEN
    try:
        known = [Instance(**row) for row in json.loads(path.read_text()).get("instances", [])]
        last = json.loads(path.read_text()).get("last_read")
    except (OSError, ValueError, TypeError):
        known, last = [], None
    tracker = Tracker(clock_for(cfg), known)
    tracker.last_read = last
    got = tracker.read()
    state.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"last_read": tracker.last_read, "instances": [asdict(i) for i in got]}, indent=1))
    tmp.replace(path)
    return got


def _money(v) -> str:
    return "?" if v is None else f"${v:,.2f}"


@app.command()
@errors_to_exit
def cost(config: Path = CONFIG_ARG, as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")):
    """Lifetime cost of a cluster: per node its type, market, launch, end, hours, price and cost (measured by the
    provider's clock), the total, and the idle tail the nodes still up will bill (projected)."""
    from infra.clusters.clock import asked, cost_doc, idle_tails
    from infra.clusters.config import s2v_meta
    from infra.clusters.launch import state_dir

    s = settings()
    cfg = checked(config)
    instances = read_instances(cfg, state_dir(cfg["cluster_name"], s))
    doc = cost_doc(instances, node_price(s, cfg), until=time.time(), tails=idle_tails(cfg))
    doc["cluster"], doc["config"] = cfg["cluster_name"], str(config)
    if as_json:
        typer.echo(json.dumps(doc, indent=1))
        return
    m, p = doc["measured"], doc["projected"]
    typer.echo(f"cluster {cfg['cluster_name']} ({config}): {len(doc['nodes'])} instance(s) by the provider's clock")
    head = f"{'instance':22} {'node type':14} {'type':16} {'market':9} {'launched':20} {'ended':20} " \
           f"{'hours':>8} {'$/h':>8} {'cost':>10}"
    typer.echo(head)
    for r in doc["nodes"]:
        ended = r["terminated"] or "(running)"
        if r["end_source"] == "last seen":
            ended += "*"
        price = "?" if r["usd_per_hour"] is None else f"{r['usd_per_hour']:.3f}"
        typer.echo(f"{r['id'][:22]:22} {str(r['node_type'] or '-')[:14]:14} {r['instance_type'][:16]:16} "
                   f"{r['market']:9} {r['launched'] or '-':20} {ended:20} {r['hours']:8.3f} {price:>8} "
                   f"{_money(r['cost_usd']):>10}")
    typer.echo(f"measured: {_money(m['cost_usd'])} for {m['node_hours']:.3f} node-hours — {m['what']}")
    if m.get("note"):
        typer.echo(f"  {m['note']}")
    if any(r["end_source"] == "last seen" for r in doc["nodes"]):
        typer.echo("  * the provider no longer lists it: ended at the last read that saw it (a later read is closer)")
    typer.echo(f"projected: {_money(p['cost_usd'])} more — {p['what']}")
    for t in p["nodes"]:
        hours = "until down" if t["hours"] is None else f"{t['hours']:.2f} h, {_money(t['cost_usd'])}"
        typer.echo(f"  {t['id'][:22]}: {hours} ({t['why']})")
    want = (asked(cfg) or {}).get("asked") or {}
    typer.echo("asked: " + "; ".join(f"{n} {a['type']} ({a['market']})" for n, a in want.items())
               + (f" in {', '.join(z)}" if (z := (s2v_meta(cfg).get("capacity") or {}).get("zones")) else ""))
    typer.echo("had: " + ("; ".join(f"{h['count']}× {h['instance_type']} {h['market']} in {h['zone']} "
                                    f"({h['node_type']})" for h in doc["had"]) or "nothing yet"))
    typer.echo("not listed: instances the provider forgot before s2v first read them (EC2 keeps terminated ones "
               "about an hour; GCE and RunPod drop deleted ones at once)")
