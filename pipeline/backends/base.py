"""The render backend interface: load once per actor, prepare once per scene, render one clip at a time."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict


class BackendSpec(BaseModel):
    """What the planner needs to know about a backend, available without loading it (no torch)."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str  # part of the job key: a new version re-renders
    fps: int = 16
    clip_frames: int = 80  # new frames per clip
    first_clip_frames: int = 80  # new frames in clip 0 of a chain (Wan: 77 unless started from the image)
    tail_frames: int = 73  # frames of motion tail carried to the next clip
    size_divisor: int = 16
    sample_rate: int = 16000
    deterministic: bool = True
    id_in_pixels: bool = False  # the job id is drawn into the frames (draft): then it is part of the job key
    default_negative_prompt: str = ""  # what a job without a negative prompt gets (part of the job key)
    weights: bool = False  # reads a weights folder (model_dir): the job key then holds the folder's fingerprint
    lora: bool = False  # can apply a job's LoRA file (manifest `lora`, `lora_scale`)
    needs_cuda: bool = False  # rendering on a CPU where a GPU was billed is never acceptable (settings.cuda)


class SceneInput(BaseModel):
    """Everything a backend needs for one scene (a chain); built by the actor, passed to prepare_scene."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    job_id: str
    job_key: str
    scene_index: int
    image_path: str  # local file
    pose_path: str | None = None  # local file
    prompt: str = ""
    negative_prompt: str | None = None  # None = the backend's spec.default_negative_prompt; "" = none at all
    seed: int = 0
    width: int
    height: int
    start_frame: int  # first frame of the scene within the job
    frames: int  # frames in the scene
    clip_frames: tuple[int, ...]  # frames kept per clip of the chain
    audio: Any  # float32 mono at spec.sample_rate covering the whole chain (last clip padded)
    steps: int | None = None
    guidance: float | None = None
    shift: float | None = None
    model_dir: str | None = None  # local weights folder for this job (manifest model_dir); None = settings
    lora_path: str | None = None  # local LoRA file for this job (manifest lora), for backends with spec.lora
    lora_scale: float = 1.0


class ClipRequest(BaseModel):
    """One clip of a chain: its index, where it sits in the scene and the job, and its seed."""

    model_config = ConfigDict(frozen=True)

    index: int  # clip index within the chain
    scene_frame_start: int  # first frame of this clip within the scene
    frames: int  # frames to keep (the last clip is trimmed)
    job_clip_index: int  # clip index within the whole job
    seed: int


class ClipOutput(BaseModel):
    """Frames (T,H,W,3) uint8 and the lossless motion tail for the next clip."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    frames: Any
    tail: Any
    info: dict = {}


class Backend(ABC):
    """A renderer. Subclasses keep heavy imports (torch, diffsynth) inside methods, never at module top."""

    spec: ClassVar[BackendSpec]

    def __init__(self, settings=None):
        self.settings = settings
        self.loaded = False

    @abstractmethod
    def load(self, device: str = "cpu") -> None:
        """Load weights once per actor. `device` is e.g. "cpu" or "cuda:0"."""

    def prepare_scene(self, scene: SceneInput) -> Any:
        """Per-scene work done once (audio embeddings, pose latents). Returns a context for render_clip."""
        return scene

    @abstractmethod
    def render_clip(self, ctx: Any, clip: ClipRequest, tail: np.ndarray | None) -> ClipOutput:
        """Render one clip conditioned on the previous clip's tail (None for clip 0)."""

    def checkpointing(self, ctx: Any, clip: "ClipRequest") -> None:
        """Called just before a rendered clip's checkpoint is written (the fault drills inject faults here)."""

    def unload(self) -> None:
        self.loaded = False

    @classmethod
    def check_settings(cls, settings) -> str | None:
        """Why this backend cannot run with these settings (checked once per run before planning; no torch)."""
        return None

    @classmethod
    def weights_files(cls, root: Path) -> list[str]:
        """The files of a weights folder that decide its pixels, relative to it (for spec.weights backends)."""
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))

    @classmethod
    def output_size(cls, image_wh: tuple[int, int], area_wh: tuple[int, int]) -> tuple[int, int]:
        return fit_size(image_wh, area_wh, cls.spec.size_divisor)


def fit_size(image_wh: tuple[int, int], area_wh: tuple[int, int], divisor: int) -> tuple[int, int]:
    """Official Wan sizing: an area budget, the reference aspect kept, never upscaled, sides multiple of divisor."""
    iw, ih = image_wh
    budget = area_wh[0] * area_wh[1]
    scale = min(1.0, math.sqrt(budget / float(iw * ih)))
    w = max(divisor, int(iw * scale) // divisor * divisor)
    h = max(divisor, int(ih * scale) // divisor * divisor)
    return w, h


def clip_frame_counts(total: int, spec: BackendSpec) -> list[int]:
    """Frames kept per clip of a chain of `total` frames (last clip trimmed)."""
    if total <= 0:
        return []
    counts = [min(total, spec.first_clip_frames)]
    left = total - counts[0]
    while left > 0:
        counts.append(min(left, spec.clip_frames))
        left -= counts[-1]
    return counts
