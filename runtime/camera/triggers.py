"""NG triggers of ``stpm-camera``: run a command, POST to a URL. Neither may stop inspection."""

from __future__ import annotations

import collections
import json
import logging
import os
import shlex
import subprocess
import threading
import urllib.request
from typing import Any, Protocol

from stpm_edge.errors import ConfigError, note

logger = logging.getLogger(__name__)


class Trigger(Protocol):
    """Called with every NG record; must return at once (the loop is real-time)."""

    def fire(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class UrlTrigger:
    """POSTs NG records as JSON from one background thread (bounded queue, timeout per POST)."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url, self.timeout = url, timeout
        self._queue: collections.deque[dict] = collections.deque(maxlen=100)
        self._event = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="stpm-trigger-url", daemon=True)
        self._thread.start()

    def fire(self, record: dict[str, Any]) -> None:
        self._queue.append(record)
        self._event.set()

    def _post(self, record: dict[str, Any]) -> None:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(record).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except Exception as exc:  # network errors must never stop the inspection
            logger.warning("trigger POST to %s failed: %s", self.url, exc)

    def _work(self) -> None:
        while not (self._stop and not self._queue):
            self._event.wait(0.2)
            self._event.clear()
            while self._queue:
                self._post(self._queue.popleft())

    def close(self) -> None:
        self._stop = True
        self._event.set()
        self._thread.join(timeout=self.timeout + 1.0)


class CommandTrigger:
    """Runs ``shlex.split(cmd)`` on NG (never through a shell), without waiting; the record is in
    the environment as ``STPM_EVENT`` (JSON), ``STPM_FRAME``, ``STPM_SCORE``, ``STPM_VERDICT``."""

    def __init__(self, command: str) -> None:
        self.argv = shlex.split(command)
        if not self.argv:
            raise ConfigError(note("--trigger-cmd is empty", "give a command, e.g. 'beep.sh'"))
        self._running: list[subprocess.Popen] = []

    def fire(self, record: dict[str, Any]) -> None:
        self._running = [p for p in self._running if p.poll() is None]  # reap finished ones
        env = dict(os.environ)
        env.update(
            STPM_EVENT=json.dumps(record),
            STPM_FRAME=str(record.get("frame")),
            STPM_SCORE=str(record.get("score")),
            STPM_VERDICT=str(record.get("verdict")),
        )
        try:
            self._running.append(subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL))
        except OSError as exc:
            logger.warning("trigger command %s failed: %s", self.argv[0], exc)

    def close(self) -> None:
        for process in self._running:
            try:
                process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                logger.warning("trigger command pid %d still running at exit", process.pid)


def build_triggers(command: str | None, url: str | None) -> list[Trigger]:
    """The triggers the flags ask for (``--trigger-cmd``, ``--trigger-url``)."""
    triggers: list[Trigger] = []
    if command:
        triggers.append(CommandTrigger(command))
    if url:
        triggers.append(UrlTrigger(url))
    return triggers
