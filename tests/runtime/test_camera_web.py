"""The live page's server (runtime/camera/web.py) in-process: state, frames, marks, and hostile
paths that must never read or write outside the NG and review folders."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from stpm_edge.runtime.camera.web import CameraView, WebObserver, WebServer

SECRET = b"outside the NG folder"


@pytest.fixture
def site(tmp_path: Path):
    """A server for camera cam0 whose NG folder holds one saved NG frame and its overlay; a
    secret file lies next to the NG folder and a symlink inside points at it."""
    ng = tmp_path / "line" / "ng"
    ng.mkdir(parents=True)
    frame = np.full((48, 64, 3), 200, np.uint8)
    cv2.imwrite(str(ng / "run_00000001.png"), frame)
    cv2.imwrite(str(ng / "run_00000001_overlay.jpg"), frame)
    (tmp_path / "line" / "secret.png").write_bytes(SECRET)
    (tmp_path / "secret.png").write_bytes(SECRET)
    (ng / "link.png").symlink_to(tmp_path / "secret.png")
    views = {"cam0": CameraView("cam0", str(ng))}
    observer = WebObserver(views)
    pred = SimpleNamespace(overlay=frame, verdict="NG")
    record = {"frame": 1, "verdict": "NG", "score": 2.0, "score_normalized": 0.9,
              "latency_ms": 3.5, "saved": str(ng / "run_00000001.png")}  # fmt: skip
    observer.on_frame("cam0", SimpleNamespace(image=frame), pred, record)
    server = WebServer(views, 0, "127.0.0.1")
    yield SimpleNamespace(server=server, ng=ng, root=tmp_path, review=tmp_path / "line" / "review")
    server.close()


def request(
    site, method: str, path: str, body: dict | str | None = None, ctype: str = "application/json"
):
    """A raw request: http.client sends the path exactly as given (no normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", site.server.port, timeout=10)
    data = body if isinstance(body, str) or body is None else json.dumps(body)
    conn.request(method, path, body=data, headers={"Content-Type": ctype} if data else {})
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_state_frame_and_saved_files(site) -> None:
    status, body = request(site, "GET", "/api/state")
    cam = json.loads(body)["cameras"][0]
    assert status == 200 and cam["counts"] == {"frames": 1, "ng": 1, "events": 0}
    assert cam["ng"][0]["name"] == "run_00000001.png"
    assert cam["ng"][0]["overlay"] == "run_00000001_overlay.jpg"
    status, body = request(site, "GET", "/api/frame/cam0.jpg")
    assert status == 200 and body[:2] == b"\xff\xd8"
    status, body = request(site, "GET", "/ng/cam0/run_00000001.png")
    assert status == 200 and body == (site.ng / "run_00000001.png").read_bytes()
    status, body = request(site, "GET", "/")
    assert status == 200 and b"stpm-camera" in body


def test_mark_good_copies_and_appends_a_line(site) -> None:
    status, body = request(
        site, "POST", "/api/mark", {"camera": "cam0", "name": "run_00000001.png", "mark": "good"}
    )
    assert status == 200, body
    copy = site.review / "good" / "cam0_run_00000001.png"
    assert copy.read_bytes() == (site.ng / "run_00000001.png").read_bytes()
    assert (site.ng / "run_00000001.png").exists()  # nothing is moved or deleted
    lines = [json.loads(x) for x in (site.review / "marks.jsonl").read_text().splitlines()]
    assert lines == [json.loads(body)] and lines[0]["mark"] == "good"
    status, _ = request(
        site, "POST", "/api/mark", {"camera": "cam0", "name": "run_00000001.png", "mark": "ng"}
    )
    assert status == 409  # marked once
    assert not (site.review / "ng").exists()
    state = json.loads(request(site, "GET", "/api/state")[1])
    assert state["cameras"][0]["ng"][0]["mark"] == "good"


HOSTILE_GETS = [
    "/ng/cam0/../secret.png",
    "/ng/cam0/..%2Fsecret.png",
    "/ng/cam0/%2e%2e%2fsecret.png",
    "/ng/cam0/%252e%252e%252fsecret.png",
    "/ng/cam0/..%5Csecret.png",
    "/ng/cam0/%2Fetc%2Fpasswd",
    "/ng/cam0//etc/passwd",
    "/ng/cam0/link.png",
    "/ng/..%2F..%2Fline/secret.png",
    "/ng/cam0/.",
    "/ng/cam0/run_00000001.png%00.png",
    "/api/frame/..%2F..%2Fsecret.jpg",
]


@pytest.mark.parametrize("path", HOSTILE_GETS)
def test_hostile_reads_are_refused(site, path: str) -> None:
    status, body = request(site, "GET", path)
    assert status in (400, 404), (path, status)
    assert SECRET not in body


HOSTILE_MARKS = [
    "../secret.png",
    "..%2Fsecret.png",
    "/etc/passwd",
    str(Path("/tmp/secret.png")),
    "link.png",
    "..\\secret.png",
    "run_00000001_overlay.jpg",
    "sub/run_00000001.png",
    "",
]


@pytest.mark.parametrize("name", HOSTILE_MARKS)
def test_hostile_marks_write_nothing(site, name: str) -> None:
    before = files_under(site.root)
    status, body = request(
        site, "POST", "/api/mark", {"camera": "cam0", "name": name, "mark": "good"}
    )
    assert status in (400, 404), (name, status, body)
    assert files_under(site.root) == before


def test_bad_mark_requests(site) -> None:
    before = files_under(site.root)
    ok = {"camera": "cam0", "name": "run_00000001.png"}
    assert request(site, "POST", "/api/mark", {**ok, "mark": "delete"})[0] == 400
    assert request(site, "POST", "/api/mark", {**ok, "camera": "../cam0", "mark": "good"})[0] == 404
    form = "camera=cam0&name=run_00000001.png&mark=good"
    assert request(site, "POST", "/api/mark", form, "application/x-www-form-urlencoded")[0] == 415
    assert request(site, "POST", "/api/mark", "not json")[0] == 400
    assert request(site, "POST", "/api/mark", "[1]")[0] == 400
    assert files_under(site.root) == before


def test_camera_without_ng_folder_shows_frames_but_refuses_marks(tmp_path: Path) -> None:
    view = CameraView("cam0", None)
    frame = np.zeros((8, 8, 3), np.uint8)
    view.update(SimpleNamespace(image=frame), SimpleNamespace(overlay=None), {"verdict": "OK"})
    assert view.state()["review"] is False and view.jpeg() is not None
    from stpm_edge.runtime.camera.web import ReviewError

    with pytest.raises(ReviewError):
        view.mark("run_00000001.png", "good")


def test_attach_web_serves_every_station_camera(tmp_path: Path) -> None:
    """attach_web subscribes one observer to each loop; each camera keeps its own NG folder."""
    from stpm_edge.runtime.camera.web import attach_web

    class FakeLoop:
        def __init__(self, save_ng: str | None) -> None:
            self.options = SimpleNamespace(save_ng=save_ng)
            self.observers: list = []

        def add_observer(self, observer) -> None:
            self.observers.append(observer)

    loops = {"left": FakeLoop(str(tmp_path / "left" / "ng")), "right": FakeLoop(None)}
    assert attach_web(loops, None, "127.0.0.1") is None and not loops["left"].observers
    server = attach_web(loops, 0, "127.0.0.1")
    try:
        assert server.host == "127.0.0.1" and server.port > 0
        frame = np.zeros((8, 8, 3), np.uint8)
        loops["right"].observers[0].on_frame(
            "right", SimpleNamespace(image=frame), SimpleNamespace(overlay=None), {"verdict": "OK"}
        )
        site = SimpleNamespace(server=server)
        cams = {c["name"]: c for c in json.loads(request(site, "GET", "/api/state")[1])["cameras"]}
        assert cams["right"]["counts"]["frames"] == 1 and cams["left"]["counts"]["frames"] == 0
        assert cams["left"]["review"] is True and cams["right"]["review"] is False
        assert request(site, "GET", "/api/frame/right.jpg")[0] == 200
        assert request(site, "GET", "/api/frame/left.jpg")[0] == 404  # no frame yet
    finally:
        server.close()


def test_cli_binds_localhost_by_default_and_a_busy_port_is_a_user_error(site) -> None:
    from stpm_edge.errors import ConfigError
    from stpm_edge.runtime.camera import build_parser
    from stpm_edge.runtime.camera.web import attach_web

    args = build_parser().parse_args(["--http", "8080"])
    assert (args.http, args.http_host) == (8080, "127.0.0.1")
    loop = SimpleNamespace(options=SimpleNamespace(save_ng=None), add_observer=lambda o: None)
    with pytest.raises(ConfigError, match="--http"):
        attach_web({"cam0": loop}, site.server.port, "127.0.0.1")  # the fixture's port is taken


def test_jpeg_is_encoded_once_per_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """A page polling faster than the line gets the same bytes without a new encode; the next
    frame is encoded afresh."""
    import stpm_edge.runtime.camera.web as web

    encodes = []
    real = web.cv2.imencode
    monkeypatch.setattr(web.cv2, "imencode", lambda *a: encodes.append(1) or real(*a))
    view = CameraView("cam0", None)
    assert view.jpeg() is None
    black, white = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    view.update(SimpleNamespace(image=black), SimpleNamespace(overlay=None), {"verdict": "OK"})
    first = [view.jpeg() for _ in range(3)]
    assert len(encodes) == 1 and first[0] == first[1] == first[2]
    view.update(SimpleNamespace(image=white), SimpleNamespace(overlay=None), {"verdict": "OK"})
    second = view.jpeg()
    assert len(encodes) == 2 and second != first[0]
    decoded = cv2.imdecode(np.frombuffer(second, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.mean() > 200
