"""The live page in a real headless browser (Debian's chromium driven by Playwright-for-Python):
stpm-camera runs a tiny exported model on a paced video with --http, the page shows a live frame,
a click on "good" lands the NG frame in the review folder. The screenshot is written to the
test's tmp_path (its path is printed; pytest -s shows it).

Needs ``apt-get install chromium`` (.ci/run) and ``pip install playwright`` (dev extra; the
system browser is used, ``playwright install`` is never run); skips with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install -e .[dev])"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    if shutil.which(CHROMIUM) is None:
        reason = f"{CHROMIUM} not found (apt-get install chromium; see .ci/run)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return sync_playwright


def write_video(demo_data, path: Path, fps: float = 8.0) -> Path:
    """The demo test images, then good training images made brighter (which the 2-epoch model
    judges NG), as an MJPG video at ``fps``: a paced source like a camera."""
    images = [cv2.imread(str(p)) for p in demo_data.test_images()]
    for p in sorted(demo_data.train_good.glob("*.png"))[:4]:
        images.append(np.clip(cv2.imread(str(p)).astype(np.int32) + 70, 0, 255).astype(np.uint8))
    size = (128, 128)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for image in images:
        writer.write(cv2.resize(image, size, interpolation=cv2.INTER_NEAREST))
    writer.release()
    assert path.stat().st_size > 0
    return path


class StderrReader:
    """Collects the child's stderr lines in a thread (readline would block the test)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith("live page: "):
                    return line.split("live page: ", 1)[1].strip()
            time.sleep(0.05)
        pytest.fail("stpm-camera printed no live page URL:\n" + "".join(self.lines))


def test_live_page_in_chromium(demo_data, exported_onnx, tmp_path: Path) -> None:
    sync_playwright = _playwright()
    video = write_video(demo_data, tmp_path / "line.avi")
    ng_dir, review = tmp_path / "line" / "ng", tmp_path / "line" / "review"
    cmd = [sys.executable, "-m", "stpm_edge.runtime.camera", "--model", str(exported_onnx),
           "--source", str(video), "--realtime", "--on-end", "loop", "--threads", "1",
           "--save-ng", str(ng_dir), "--log", str(tmp_path / "line.jsonl"),
           "--stats-every", "0", "--http", "0"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    reader = StderrReader(proc)
    try:
        url = reader.url(timeout=60)
        assert url.startswith("http://127.0.0.1:")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url)
            # a live frame is shown: the <img> has decoded a JPEG from /api/frame/cam0.jpg
            page.wait_for_function(
                "() => { const i = document.querySelector('img.live-frame');"
                " return i && i.complete && i.naturalWidth > 0; }",
                timeout=30_000,
            )
            assert page.locator("svg.chart polyline").count() == 2
            good = page.locator(".ng-item button.mark-good").first
            good.wait_for(timeout=30_000)
            item = page.locator(".ng-item").first
            name = item.get_attribute("data-name")
            item.locator("img").evaluate("i => i.decode()")  # its overlay loaded
            good.click()
            page.locator(".ng-item.marked-good").first.wait_for(timeout=10_000)
            shot = tmp_path / "live_page.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the live page: {shot}")
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, "".join(reader.lines)
    copy = review / "good" / f"cam0_{name}"
    assert copy.read_bytes() == (ng_dir / name).read_bytes()
    marks = [json.loads(line) for line in (review / "marks.jsonl").read_text().splitlines()]
    assert [(m["mark"], Path(m["frame"]).name) for m in marks] == [("good", name)]
    assert shot.stat().st_size > 10_000
