"""`s2v review MANIFEST`: the review page on 127.0.0.1 — drafts proofed, approved or sent back, before any GPU is
paid for (`s2v render --approved-only`)."""

from __future__ import annotations

import getpass
import os
import subprocess
from typing import List, Optional

import typer

from orchestrator.cli.common import DefaultsOpt, SetOpt, defaults as _defaults, settings as _settings


def _who() -> str:
    """The reviewer's name to start from: git's user.name, else the login name."""
    try:
        name = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        name = ""
    try:
        return name or os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return ""


def review(manifest: str = typer.Argument(..., help="Manifest path or URI (.yaml/.yml/.csv)."),
           defaults: Optional[str] = DefaultsOpt, set_: Optional[List[str]] = SetOpt,
           review_file: Optional[str] = typer.Option(None, help="Where decisions are kept (default: beside the "
                                                     "manifest, <name>.review.jsonl)."),
           port: int = typer.Option(8765, min=1, max=65535, help="Port on 127.0.0.1 (never another address)."),
           reviewer: Optional[str] = typer.Option(None, help="Your name on decisions (default: git user.name).")
           ) -> int:
    """Serve the review page: every job's latest render with captions and chapters, the plan's figures and
    quality notes, and Approve / Request changes. Give the same --set/--defaults as the draft render, so the page
    finds the drafts where that render published them."""
    from orchestrator.review.app import serve
    from orchestrator.review.catalog import Catalog
    from orchestrator.review.store import ReviewFile, review_file_for

    settings = _settings()
    cat = Catalog(manifest, settings, _defaults(defaults, set_, settings),
                  ReviewFile(review_file_for(manifest, review_file)))
    serve(cat, reviewer or _who(), port, echo=typer.echo)
    return 0
