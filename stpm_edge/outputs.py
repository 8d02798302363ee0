"""One rule for output folders, shared by every command: never write into a non-empty one
unless the user said so. Torch-free (the benchmark tool uses it)."""

from __future__ import annotations

from pathlib import Path

from stpm_edge.errors import OutputExistsError, note


def prepare_output_dir(
    path: str | Path, allowed: bool, fix: str = "pass --force or another --out"
) -> Path:
    """Create ``path``; an :class:`OutputExistsError` (nothing written) if it exists as a file or a
    non-empty folder and ``allowed`` (``--force``, ``--resume``) is false."""
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not allowed:
        what = "is not empty" if out.is_dir() else "is a file, not a folder"
        raise OutputExistsError(note(f"{out} exists and {what}", fix))
    out.mkdir(parents=True, exist_ok=True)
    return out
