"""One exception root for the whole package, so callers catch one type.

Messages say what failed, then a ``Note:`` line with what was expected, what arrived and the fix.
Library code raises these for user mistakes; ``assert`` stays for internal invariants only.
"""

from __future__ import annotations


class StpmEdgeError(Exception):
    """Base class of every error stpm-edge raises on purpose."""


class DataError(StpmEdgeError):
    """A dataset folder, image or mask is missing, unreadable or inconsistent."""


class CheckpointError(StpmEdgeError):
    """A checkpoint is missing, truncated, malformed or of an unknown format."""


class ConfigError(StpmEdgeError):
    """A command-line flag or config-file value is invalid."""


class WeightsError(StpmEdgeError):
    """Pretrained weights cannot be found, downloaded or verified."""


class ExportError(StpmEdgeError):
    """Export failed, or an exported graph failed its own checks (parity, checker)."""


class BackendError(StpmEdgeError):
    """An inference backend is unavailable or failed (ONNX Runtime, TensorRT)."""


class OutputExistsError(StpmEdgeError):
    """An output path exists and ``--force`` was not given: nothing was overwritten."""


def note(message: str, detail: str) -> str:
    """Format ``message`` with the ``Note:`` line that tells the user how to fix it."""
    return f"{message}\n  Note: {detail}"
