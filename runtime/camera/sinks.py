"""Where the loop's results go: the JSONL log, saved NG frames, an on-screen window.

Output folders are created when the sink is built, before the first frame: a path that cannot be
created is a user error (ConfigError naming the flag), never a traceback mid-run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2

from stpm_edge.errors import ConfigError, note

from .queue import Frame

logger = logging.getLogger(__name__)


def _make_parent(path: Path, flag: str, folder: bool = False) -> None:
    target = path if folder else path.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            note(
                f"{flag} {path}: cannot create the folder {target} ({exc.strerror or exc})",
                f"give {flag} a path in a writable folder",
            )
        ) from exc


def prepare_outputs(log: str | os.PathLike | None, save_ng: str | os.PathLike | None) -> None:
    """Create the folders of ``--log`` and ``--save-ng`` up front (before a model loads for
    seconds), so an unwritable path fails at once with a ConfigError naming the flag."""
    if log is not None:
        _make_parent(Path(log), "--log")
    if save_ng is not None:
        _make_parent(Path(save_ng), "--save-ng", folder=True)


class JsonlLog:
    """Thread-safe JSON-lines writer; every line is flushed whole, so the file always parses."""

    def __init__(self, path: str | os.PathLike | None, flag: str = "--log") -> None:
        self._lock = threading.Lock()
        self._file = None
        if path is None:
            return
        path = Path(path)
        _make_parent(path, flag)
        try:
            # append: a restarted service keeps its history; closed in close()
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(
                note(
                    f"{flag} {path}: cannot open for writing ({exc.strerror or exc})",
                    f"give {flag} a writable file path",
                )  # fmt: skip
            ) from exc

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = None


class NgSaver:
    """Writes each NG frame (PNG, lossless) and its overlay (JPEG) to ``--save-ng``.

    File names start with the run's start time, so restarts never overwrite earlier frames.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        _make_parent(self.folder, "--save-ng", folder=True)
        self._run_tag = datetime.now().strftime("%Y%m%dT%H%M%S")

    def save(self, frame: Frame, pred: Any) -> str:
        """Write the frame (and the overlay if the prediction has one); returns the frame path."""
        base = self.folder / f"{self._run_tag}_{frame.id:08d}"
        if not cv2.imwrite(f"{base}.png", frame.image):
            logger.warning("could not write %s.png", base)
        if pred.overlay is not None:
            cv2.imwrite(f"{base}_overlay.jpg", pred.overlay)
        return f"{base}.png"


class Display:
    """An OpenCV window with the verdict; ``q`` or Esc asks the loop to stop.

    Without a display (headless device) it logs once and turns itself off.
    """

    WINDOW = "stpm-camera"

    def __init__(self) -> None:
        self.enabled = True
        self.quit_requested = False

    def show(self, frame: Frame, pred: Any) -> None:
        if not self.enabled:
            return
        image = pred.overlay if pred.overlay is not None else frame.image
        label = f"{pred.verdict} {pred.score_normalized:.2f}"
        color = (0, 0, 255) if pred.verdict == "NG" else (0, 200, 0)
        image = cv2.putText(image.copy(), label, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 1.0, color, 2)
        try:
            cv2.imshow(self.WINDOW, image)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                self.quit_requested = True
        except cv2.error as exc:
            logger.error("display unavailable (%s); continuing without --display", exc)
            self.enabled = False

    def close(self) -> None:
        if self.enabled:
            with contextlib.suppress(cv2.error):
                cv2.destroyAllWindows()
