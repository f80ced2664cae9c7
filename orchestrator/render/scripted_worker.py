"""A render actor for the in-process runtime: it speaks the RenderWorker protocol (ping, info, notices, release,
render_clip), checkpoints every clip in the real work area, and misbehaves on switches — like Ray's MockProvider:

    {"action": "fail" | "crash" | "hang" | "slow", "job": id, "scene": i, "clip": k, "actor": n, "node": id,
     "times": n (0 = every time), "seconds": s (slow)}

fail raises a RenderError (the job's fault); crash kills the actor's process mid-clip; hang never finishes; slow
takes `seconds`. A switch matches the clips whose fields it names. `broken` makes the actor refuse to start."""

from __future__ import annotations

import tempfile
from pathlib import Path

from core.errors import ChainBroken, CudaUnavailable, Preempted, RenderError, Warned
from orchestrator.render.inprocess import Crash
from orchestrator.workarea.layout import WorkArea

HANG_S = 1e9


class ScriptedWorker:
    """ScriptedWorker.configure(...) makes a class with its own switches, shared by every actor of a run and by
    their restarts (a switch with times: 1 fires once in the whole run), and its own record of what ran."""

    switches: tuple[dict, ...] = ()
    clip_s: float = 1.0
    broken: str | None = None  # raised by ping: the actor could not set itself up
    used: dict[int, int] = {}  # switch index → times it fired
    starts: list[tuple] = []  # (job, scene, clip, actor) of every clip render started
    saved: list[tuple] = []  # (job, scene, clip, actor) of every clip checkpointed

    def __init__(self, runtime, actor: int, node: str, settings, backends: tuple[str, ...]):
        self.rt, self.actor, self.node, self.settings, self.backends = runtime, actor, node, settings, backends
        self.clips = 0
        self.held: tuple | None = None  # (key, scene, clip) whose tail this actor holds
        self.current: dict | None = None  # the switch the clip call now running was given as it started
        self.video = Path(tempfile.mkdtemp(prefix="s2v-scripted-")) / "clip.mp4"
        self.video.write_bytes(b"scripted clip")

    @classmethod
    def configure(cls, *switches: dict, clip_s: float = 1.0, broken: str | None = None):
        return type("Scripted", (cls,), {"switches": tuple(switches), "clip_s": clip_s, "broken": broken,
                                         "used": {}, "starts": [], "saved": []})

    # ---------- costs: how many virtual seconds each call takes ----------
    def cost(self, method: str, *args, **kwargs) -> float:
        """Called once as each call starts: a clip call takes its switch now (a clip killed while it hangs has
        used its switch up)."""
        if method != "render_clip":
            return 0.0
        plan, si, ci = args[0], args[1], args[2]
        node = self.rt.nodes[self.node]
        # the notices are read as the clip starts, as the real actor does: refused before anything renders
        if node.interruption:
            self.current = {"action": "refuse", "why": Preempted(f"preemption notice: {node.interruption}", self.node)}
            return 0.0
        if kwargs.get("starts_chain") and node.warning:
            self.current = {"action": "refuse", "why": Warned(f"early spot warning: {node.warning}: no new chain")}
            return 0.0
        self.starts.append((plan.job.id, si, ci, self.actor))
        self.current = sw = self._switch(plan.job.id, si, ci)
        return self._seconds(sw)

    def _seconds(self, sw: dict | None) -> float:
        if sw and sw["action"] == "hang":
            return HANG_S
        if sw and sw["action"] == "slow":
            return float(sw.get("seconds", self.clip_s))
        return self.clip_s

    def _switch(self, job: str, si: int, ci: int) -> dict | None:
        for i, sw in enumerate(self.switches):
            if any(k in sw and sw[k] != v for k, v in (("job", job), ("scene", si), ("clip", ci),
                                                        ("actor", self.actor), ("node", self.node))):
                continue
            if sw.get("times", 1) and self.used.get(i, 0) >= sw.get("times", 1):
                continue
            self.used[i] = self.used.get(i, 0) + 1
            return sw
        return None

    # ---------- the RenderWorker protocol ----------
    def ping(self) -> dict:
        if self.broken:
            raise CudaUnavailable(self.broken)
        return {"node": self.node, "pid": self.actor}

    def info(self) -> dict:
        return {"node": self.node, "pid": self.actor, "actor": self.actor, "loads": {b: 1 for b in self.backends},
                "gpus": [str(self.actor)], "clips": self.clips}

    def notices(self) -> dict:
        n = self.rt.nodes[self.node]
        return {"node": self.node, "interruption": n.interruption, "warning": n.warning}

    def release(self) -> list:
        self.held = None
        return []

    def render_clip(self, plan, si: int, ci: int, work: str, more: bool = False, starts_chain: bool = False) -> dict:
        sw, self.current = self.current, None
        if sw and sw["action"] == "refuse":
            raise sw["why"]
        wa = WorkArea.at(work, self.settings)
        # the previous clip's tail: held here when this actor rendered it, else its checkpoint must exist
        if ci > 0 and self.held != (plan.key, si, ci - 1) and ci - 1 not in wa.done_clips(plan.key).get(si, set()):
            raise ChainBroken(f"{plan.job.id} scene {si} clip {ci}: no tail for clip {ci - 1}")
        self.held = None
        took = self._seconds(sw)
        if sw and sw["action"] == "fail":
            raise RenderError(f"{plan.job.id} scene {si} clip {ci}: scripted failure")
        if sw and sw["action"] == "crash":
            raise Crash(f"scripted crash in {plan.job.id} scene {si} clip {ci}")
        clip = plan.scenes[si].clips[ci]
        marker = {"job": plan.job.id, "key": plan.key, "scene": si, "clip": ci, "frames": clip.frames,
                  "seed": clip.seed, "render_s": took, "node": self.node, "at": self.rt.time()}
        wa.save_clip(plan.key, si, ci, self.video, None, marker)
        self.saved.append((plan.job.id, si, ci, self.actor))
        self.clips += 1
        self.held = (plan.key, si, ci)
        return {"job": plan.job.id, "scene": si, "clip": ci, "frames": clip.frames,
                "render_s": took, "total_s": took, "node": self.node,
                "pid": self.actor, "saved": [[plan.job.id, si, ci]],
                "warning": self.rt.nodes[self.node].warning is not None}
