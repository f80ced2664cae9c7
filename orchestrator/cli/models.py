"""`s2v models …`: tiny test weights and layout checks (Wan, Whisper); heavy imports stay inside commands."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Model weights: build tiny test weights, check a weights folder.", no_args_is_help=True)


def _built(out: Path, missing_files, what: str) -> None:
    """Check a folder a tiny-weights builder wrote with its loader's own list, and say what was written."""
    missing = missing_files(out)
    if missing:  # the builder and the loader disagree about the layout: a bug, say so loudly
        typer.echo(f"built {out}, but the loader would miss: {', '.join(missing)}", err=True)
        raise typer.Exit(1)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    typer.echo(f"tiny {what} weights in {out} ({size / 1e6:.1f} MB)")


def _checked(directory: Path, missing_files) -> None:
    missing = missing_files(directory)
    if missing:
        typer.echo(f"{directory}: missing " + ", ".join(missing), err=True)
        raise typer.Exit(2)
    typer.echo(f"{directory}: complete")


@app.command("make-tiny")
def make_tiny_cmd(
    directory: Path = typer.Argument(..., help="Folder to write (official Wan2.2-S2V-14B layout)."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
) -> None:
    """Build tiny random Wan 2.2 S2V weights offline, for tests and demos (point model_dir at the folder)."""
    from pipeline.backends.wan_layout import missing_files
    from pipeline.backends.wan_tiny import make_tiny

    _built(make_tiny(directory, seed=seed), missing_files, "Wan2.2-S2V")


@app.command("make-tiny-lora")
def make_tiny_lora_cmd(
    directory: Path = typer.Argument(..., help="A weights folder (e.g. from make-tiny) whose DiT the LoRA targets."),
    out: Path = typer.Option(None, help="LoRA file to write; default: DIRECTORY-lora.safetensors beside it."),
    rank: int = typer.Option(4, min=1, help="LoRA rank."),
    seed: int = typer.Option(0, help="Seed of the random LoRA weights."),
) -> None:
    """Build a random LoRA for a weights folder's DiT (tests and demos: point a job's `lora` at it)."""
    from pipeline.backends.wan_tiny import make_tiny_lora

    dest = out or directory.parent / f"{directory.name}-lora.safetensors"
    path = make_tiny_lora(directory, dest, rank=rank, seed=seed)
    typer.echo(f"LoRA for {directory} in {path} ({path.stat().st_size / 1e6:.2f} MB)")


@app.command("check")
def check_cmd(directory: Path = typer.Argument(..., help="A Wan2.2-S2V-14B folder.")) -> None:
    """List the files the wan-s2v loader needs and cannot find (exit 2 when any is missing)."""
    from pipeline.backends.wan_layout import missing_files

    _checked(directory, missing_files)


@app.command("make-tiny-asr")
def make_tiny_asr_cmd(
    directory: Path = typer.Argument(..., help="Folder to write (a transformers Whisper folder)."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
) -> None:
    """Build tiny random Whisper weights offline, for tests and demos of `captions: auto` (S2V_ASR_MODEL_DIR)."""
    from pipeline.asr import missing_files
    from pipeline.asr_tiny import make_tiny_asr

    _built(make_tiny_asr(directory, seed=seed), missing_files, "Whisper")


@app.command("check-asr")
def check_asr_cmd(directory: Path = typer.Argument(..., help="A Whisper model folder.")) -> None:
    """List the files the Whisper loader needs and cannot find (exit 2 when any is missing)."""
    from pipeline.asr import missing_files

    _checked(directory, missing_files)
