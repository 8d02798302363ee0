"""The operator's screen: ``stpm-camera --http PORT`` serves a small live page (standard library
only: ``http.server`` in a daemon thread).

The page (:mod:`.web_page`) polls ``/api/state`` once a second and shows, per camera, the latest
frame (``/api/frame/CAMERA.jpg``: the NG overlay when there is one, else the frame as captured),
the verdict, counters, a latency/score strip chart, and the recent NG frames saved by
``--save-ng`` with their overlays (``/ng/CAMERA/NAME``). The operator marks an NG frame as a
false reject ("good") or confirms it ("ng") with ``POST /api/mark`` ``{"camera", "name",
"mark"}``: a COPY of the frame goes to ``NG_DIR/../review/good/`` or ``.../review/ng/`` and one
line is appended to ``NG_DIR/../review/marks.jsonl``. Nothing is deleted or moved; a frame is
marked once (a second mark answers 409; to undo, remove the copy and its line by hand).
``stpm-tune RUN/best.ckpt --extra-good NG_DIR/../review/good`` then learns from the marks.

Safety: the server binds 127.0.0.1 unless ``--http-host`` says otherwise; a request names a
camera from the run and a plain file name (letters, digits, ``_ - .``, a .png/.jpg suffix, no
``..``, no separators, no ``%`` left after the one URL decoding), which must resolve to a regular
file (not a symlink) directly inside that camera's NG folder; anything else is answered 400/404
without touching the disk outside the NG and review folders. Marks must be sent as JSON, so a
page from another origin cannot post one without a CORS preflight, which this server never
grants.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from .queue import now_iso
from .web_page import PAGE

logger = logging.getLogger(__name__)

HISTORY = 240  # points in the strip chart (about the last 240 frames)
RECENT_NG = 24  # NG frames listed per camera
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}\.(png|jpg)$")
MARKS = ("good", "ng")


class ReviewError(Exception):
    """A request the page refuses; ``status`` is the HTTP answer."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def safe_file(folder: Path, name: str) -> Path:
    """``folder/name`` if ``name`` is a plain file name of a regular file directly inside
    ``folder`` (resolved, no symlink); :class:`ReviewError` otherwise (module doc)."""
    if not SAFE_NAME.match(name) or ".." in name:
        raise ReviewError(HTTPStatus.BAD_REQUEST, "not a plain frame file name")
    root = folder.resolve()
    path = root / name
    if path.is_symlink() or not path.is_file() or path.resolve().parent != root:
        raise ReviewError(HTTPStatus.NOT_FOUND, "no such frame")
    return path


class CameraView:
    """What the page shows of one camera; written by the loop thread, read by the server."""

    def __init__(self, name: str, ng_dir: str | None) -> None:
        self.name = name
        self.ng_dir = Path(ng_dir) if ng_dir else None
        self.lock = threading.Lock()
        self.image: np.ndarray | None = None  # the latest frame or NG overlay (BGR), not copied
        self.last: dict[str, Any] = {}
        self.counts = {"frames": 0, "ng": 0, "events": 0}
        self.history: deque[tuple[int, float, float]] = deque(maxlen=HISTORY)
        self.recent_ng: deque[dict[str, Any]] = deque(maxlen=RECENT_NG)
        self.marks: dict[str, str] = {}
        # (frames count it was encoded at, JPEG bytes): a page polling faster than the line runs
        # gets the same bytes again instead of a new encode of the same frame
        self._jpeg: tuple[int, bytes] | None = None

    @property
    def review_dir(self) -> Path | None:
        return self.ng_dir.parent / "review" if self.ng_dir else None

    def update(self, frame: Any, prediction: Any, record: dict[str, Any]) -> None:
        overlay = getattr(prediction, "overlay", None)
        image = overlay if overlay is not None else frame.image
        with self.lock:
            self.image = image  # the loop never writes into a frame after handing it on
            self.counts["frames"] += 1
            self.counts["ng"] += int(record.get("verdict") == "NG")
            keys = ("frame", "timestamp", "verdict", "score", "score_normalized", "latency_ms")
            self.last = {k: record.get(k) for k in keys}
            self.history.append(
                (int(record.get("frame", 0)), float(record.get("latency_ms", 0.0)),
                 float(record.get("score_normalized", 0.0)))
            )  # fmt: skip
            saved = record.get("saved")
            if saved:
                name = Path(saved).name
                overlay_name = f"{Path(saved).stem}_overlay.jpg"
                self.recent_ng.appendleft(
                    {
                        "name": name,
                        "overlay": overlay_name if overlay is not None else name,
                        "frame": record.get("frame"),
                        "timestamp": record.get("timestamp"),
                        "score_normalized": record.get("score_normalized"),
                    }
                )

    def state(self) -> dict[str, Any]:
        with self.lock:
            ng = [dict(item, mark=self.marks.get(item["name"])) for item in self.recent_ng]
            return {
                "name": self.name,
                "last": dict(self.last),
                "counts": dict(self.counts),
                "history": list(self.history),
                "ng": ng,
                "review": self.ng_dir is not None,
            }

    def jpeg(self) -> bytes | None:
        """The latest image as JPEG; encoded once per frame however often the page asks."""
        with self.lock:
            image, version, cached = self.image, self.counts["frames"], self._jpeg
        if image is None:
            return None
        if cached is not None and cached[0] == version:
            return cached[1]
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            return None
        data = buf.tobytes()
        with self.lock:
            if self.counts["frames"] == version:  # not already replaced by a newer frame
                self._jpeg = (version, data)
        return data

    def mark(self, name: str, mark: str) -> dict[str, Any]:
        """Copy NG frame ``name`` to ``review/<mark>/`` and append a ``marks.jsonl`` line."""
        if mark not in MARKS:
            raise ReviewError(HTTPStatus.BAD_REQUEST, f"mark must be one of {MARKS}")
        if self.ng_dir is None or self.review_dir is None:
            raise ReviewError(HTTPStatus.CONFLICT, "this camera saves no NG frames (--save-ng)")
        if name.endswith("_overlay.jpg") or not name.endswith(".png"):
            raise ReviewError(HTTPStatus.BAD_REQUEST, "mark the frame (.png), not its overlay")
        source = safe_file(self.ng_dir, name)
        with self.lock:
            if name in self.marks:
                raise ReviewError(HTTPStatus.CONFLICT, f"already marked {self.marks[name]}")
            target_dir = self.review_dir / mark
            target_dir.mkdir(parents=True, exist_ok=True)
            target = target_dir / f"{self.name}_{name}"
            shutil.copyfile(source, target)
            line = {"timestamp": now_iso(), "camera": self.name, "frame": str(source),
                    "mark": mark, "copy": str(target)}  # fmt: skip
            with open(self.review_dir / "marks.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
            self.marks[name] = mark
        logger.info("operator marked %s of camera %s as %s -> %s", name, self.name, mark, target)
        return line


class WebObserver:
    """A :class:`~.observers.LoopObserver` feeding the :class:`CameraView` of each camera."""

    def __init__(self, views: Mapping[str, CameraView]) -> None:
        self.views = views

    def on_frame(self, camera: str, frame: Any, prediction: Any, record: dict[str, Any]) -> None:
        view = self.views.get(camera)
        if view is not None:
            view.update(frame, prediction, record)

    def on_event(self, camera: str, record: dict[str, Any]) -> None:
        view = self.views.get(camera)
        if view is not None:
            with view.lock:
                view.counts["events"] += 1


def _handler(views: Mapping[str, CameraView]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "stpm-camera"

        def log_message(self, fmt: str, *args: Any) -> None:  # keep stderr for the loop's lines
            logger.debug("http %s", fmt % args)

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: Any) -> None:
            self._send(status, json.dumps(data).encode(), "application/json")

        def _view(self, name: str) -> CameraView:
            view = views.get(name)
            if view is None:
                raise ReviewError(HTTPStatus.NOT_FOUND, "no such camera")
            return view

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            try:
                self._get(unquote(urlsplit(self.path).path))
            except ReviewError as exc:
                self._json(exc.status, {"error": str(exc)})

        def _get(self, path: str) -> None:
            parts = path.split("/")
            if path in ("/", "/index.html"):
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif path == "/api/state":
                self._json(
                    200, {"time": time.time(), "cameras": [v.state() for v in views.values()]}
                )
            elif (
                len(parts) == 4 and parts[:3] == ["", "api", "frame"] and parts[3].endswith(".jpg")
            ):
                body = self._view(parts[3][: -len(".jpg")]).jpeg()
                if body is None:
                    raise ReviewError(HTTPStatus.NOT_FOUND, "no frame yet")
                self._send(200, body, "image/jpeg")
            elif len(parts) == 4 and parts[:2] == ["", "ng"]:
                view = self._view(parts[2])
                if view.ng_dir is None:
                    raise ReviewError(HTTPStatus.NOT_FOUND, "this camera saves no NG frames")
                file = safe_file(view.ng_dir, parts[3])
                ctype = "image/png" if file.suffix == ".png" else "image/jpeg"
                self._send(200, file.read_bytes(), ctype)
            else:
                raise ReviewError(HTTPStatus.NOT_FOUND, "not found")

        def do_POST(self) -> None:  # noqa: N802
            try:
                if urlsplit(self.path).path != "/api/mark":
                    raise ReviewError(HTTPStatus.NOT_FOUND, "not found")
                if self.headers.get("Content-Type", "").split(";")[0] != "application/json":
                    raise ReviewError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON")
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 < length <= 4096:
                    raise ReviewError(HTTPStatus.BAD_REQUEST, "body size")
                body = json.loads(self.rfile.read(length))
                if not isinstance(body, dict):
                    raise ReviewError(HTTPStatus.BAD_REQUEST, "expected a JSON object")
                view = self._view(str(body.get("camera", "")))
                self._json(200, view.mark(str(body.get("name", "")), str(body.get("mark", ""))))
            except ReviewError as exc:
                self._json(exc.status, {"error": str(exc)})
            except (ValueError, OSError) as exc:
                self._json(HTTPStatus.BAD_REQUEST, {"error": type(exc).__name__})

    return Handler


class WebServer:
    """The page's HTTP server in a daemon thread; :meth:`close` stops it."""

    def __init__(self, views: Mapping[str, CameraView], port: int, host: str) -> None:
        self.views = views
        self._server = ThreadingHTTPServer((host, port), _handler(views))
        self._server.daemon_threads = True
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="stpm-http", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def attach_web(loops: Mapping[str, Any], port: int | None, host: str) -> WebServer | None:
    """Serve the live page for ``loops`` (camera name -> InspectionLoop) on ``host:port``."""
    if port is None:
        return None
    from stpm_edge.errors import ConfigError, note

    views = {name: CameraView(name, loop.options.save_ng) for name, loop in loops.items()}
    observer = WebObserver(views)
    for loop in loops.values():
        loop.add_observer(observer)
    try:
        server = WebServer(views, port, host)
    except OSError as exc:
        raise ConfigError(
            note(f"--http {port}: cannot listen on {host}:{port} ({exc.strerror or exc})",
                 "choose a free port (or 0 for any free one)")
        ) from exc  # fmt: skip
    logger.info("live page: %s", server.url)
    print(f"live page: {server.url}", file=sys.stderr, flush=True)
    return server
