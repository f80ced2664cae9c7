"""The job fields of the delivery step (captions, renditions, chapters, packages), mixed into JobSpec; validated
like every field."""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from pipeline.chapters import Chapter, check_order
from pipeline.renditions import Rendition

BCP47_RE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")
AUTO = "auto"
PACKAGES = ("scorm12", "scorm2004")


def _yaml_cell(v: Any, what: str) -> Any:
    """A CSV cell or --set value holding a list in YAML flow form, e.g. [{at: 0, title: Intro}]."""
    if isinstance(v, str):
        try:
            return yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise ValueError(f"not a YAML list of {what}: {e}") from None
    return v


def language_tag(v: str) -> str:
    """A well-formed, known BCP-47 tag in its standard form ('en-us' → 'en-US'); ValueError otherwise."""
    import langcodes

    if not isinstance(v, str) or not BCP47_RE.match(v.strip()):
        raise ValueError(f"{v!r} is not a BCP-47 language tag (e.g. en, en-US, pt-BR, zh-Hant)")
    tag = v.strip()
    if not langcodes.tag_is_valid(tag):
        raise ValueError(f"{tag!r} is not a valid BCP-47 language tag (e.g. en, en-US, pt-BR, zh-Hant)")
    lang = langcodes.Language.get(tag)
    try:
        lang.to_alpha3()
    except LookupError:
        raise ValueError(f"'{lang.language}' in {tag!r} is not a known language code") from None
    return lang.to_tag()


def alpha3(tag: str) -> str:
    """ISO 639-2/T code of a tag's language: what an MP4 track's language field holds ('en-US' → 'eng')."""
    import langcodes

    return langcodes.Language.get(tag).to_alpha3()


class DeliveryFields(BaseModel):
    """Captions, renditions, chapters and packages of a job: they change the post step's outputs, never the job
    key."""

    # the lesson's title in players, packages and transcripts (default: its id)
    title: str | None = Field(None, max_length=200)
    captions: str | None = Field(None, description="SRT/WebVTT path or URI, or 'auto' (speech recognition).")
    caption_language: str = "en"
    captions_burn: bool = False
    renditions: tuple[Rendition, ...] = ()
    chapters: tuple[Chapter, ...] = ()
    package: Literal["none", "scorm12", "scorm2004"] = "none"
    package_completion: float = Field(0.9, gt=0, le=1)  # share of the lesson watched that counts as completed

    @field_validator("caption_language")
    @classmethod
    def _language(cls, v: str) -> str:
        return language_tag(v)

    @field_validator("captions_burn")
    @classmethod
    def _burn_needs_captions(cls, v: bool, info: ValidationInfo) -> bool:
        if v and not info.data.get("captions"):
            raise ValueError("needs captions: give a caption file or 'auto'")
        return v

    @field_validator("renditions", mode="before")
    @classmethod
    def _renditions(cls, v: Any) -> Any:
        if v is None:
            return ()
        v = _yaml_cell(v, "renditions")  # e.g. [{name: hd, height: 720}]
        if isinstance(v, dict):
            v = [v]
        if not isinstance(v, (list, tuple)):
            raise ValueError("must be a list of renditions, each a mapping with a name")
        kinds = {r.get("segments", "fmp4") for r in v if isinstance(r, dict) and r.get("format") == "hls"}
        if len(kinds) > 1:  # one master playlist, one subtitle clock: every variant cut the same way
            raise ValueError("HLS renditions of a job must share one segment type (all fmp4 or all ts)")
        names = [r.get("name") for r in v if isinstance(r, dict)]
        dup = sorted({str(n) for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"rendition name(s) {', '.join(dup)} used twice; names must be unique in a job")
        return v

    @field_validator("chapters", mode="before")
    @classmethod
    def _chapters(cls, v: Any) -> Any:
        if v is None or v == "":
            return ()
        v = _yaml_cell(v, "chapters")
        if not isinstance(v, (list, tuple)) or not all(isinstance(c, (dict, Chapter)) for c in v):
            raise ValueError("must be a list of chapters, each a mapping {at: seconds or mm:ss, title: text}")
        return v

    @field_validator("chapters")
    @classmethod
    def _in_order(cls, v: tuple[Chapter, ...]) -> tuple[Chapter, ...]:
        return check_order(v)

    @field_validator("package", mode="before")
    @classmethod
    def _package(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none")):
            return "none"
        if isinstance(v, str) and v.strip().lower().replace(" ", "").replace("_", "") in PACKAGES:
            return v.strip().lower().replace(" ", "").replace("_", "")
        raise ValueError(f"{v!r} is not a package kind: use scorm12 (SCORM 1.2), scorm2004 (4th edition) or none")

    @field_validator("title")
    @classmethod
    def _title(cls, v: str | None) -> str | None:
        v = " ".join(v.split()) if isinstance(v, str) else v
        return v or None

    @property
    def captions_auto(self) -> bool:
        return self.captions == AUTO

    def delivery_spec(self) -> dict:
        """What the post step must produce (canonical: part of the rendition keys)."""
        return {"captions": self.captions, "language": self.caption_language, "burn": self.captions_burn,
                "renditions": [r.model_dump() for r in self.renditions],
                "chapters": [c.model_dump() for c in self.chapters], "package": self.package,
                "completion": self.package_completion}
