"""A real RTSP server for the tests: GStreamer's gst-rtsp-server serving one video file as H.264.

Run with the SYSTEM Python (Debian's python3-gi + gir1.2-gst-rtsp-server-1.0 and the GStreamer
plugins; .ci/run installs them), not the project's venv::

    /usr/bin/python3 tests/runtime/rtsp_server.py --port 8554 --video clip.avi

serves ``rtsp://127.0.0.1:PORT/stream`` (loopback only) and prints ``READY <url>`` once
listening. Every client session plays the file from its start, in real time. The video is an
MJPEG AVI (what OpenCV writes without extra codecs); it is decoded and re-encoded to H.264 with
short GOPs so a client that (re)connects gets a picture within a few frames.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PIPELINE = (
    "( filesrc location={video} ! avidemux ! jpegdec ! videoconvert ! video/x-raw,format=I420 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=5 "
    "! rtph264pay name=pay0 pt=96 config-interval=1 )"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--video", required=True)
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE.format(video=args.video))
    factory.set_shared(True)
    server.get_mount_points().add_factory("/stream", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    print(f"READY rtsp://127.0.0.1:{args.port}/stream", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
