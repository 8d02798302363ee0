"""Monitoring of ``stpm-camera``: Prometheus metrics (``--metrics-port``) and score drift.

**Drift.** A model is calibrated on good images: the calibration (``stpm.calibration``) holds
``score_min`` (the lowest good validation score for ``val_good``; the lowest labelled score for
``labelled``) and ``image_threshold``. :class:`DriftMonitor` places the rolling median of the
raw scores of the last ``window`` OK frames on that scale::

    drift = (median(OK scores) - score_min) / (image_threshold - score_min)

0 is the lowest calibration score, 1 the threshold. Good parts sit inside: with log-normal
scores (spread s) and the 3-sigma threshold, the validation median sits at
``(1 - e^-2s) / (e^3s - e^-2s)`` of the way, at most 0.4 whatever s (a model calibrated on a
handful of validation images has a high ``score_min`` and puts them somewhat below 0). Brighter
light or a new glare pushes OK frames towards the threshold before they turn NG (above
``HIGH = 0.6``). The statistic only sees OK frames, so it is censored at the threshold: a shift
that turns most frames NG leaves few OK frames, hence the small ``min_frames`` (10) — measured on
the demo brick model, +30 grey levels left 12 OK frames of 64, whose median sat at 0.91. A defocused or dirty lens or a dark frame removes the detail the model scores,
and the median falls far below every good validation score (below ``LOW = -1.0``, a whole band
under ``score_min``). ``--drift-band LOW,HIGH`` changes the bounds. The alarm starts when the
statistic leaves ``[LOW, HIGH]`` (after ``min_frames`` OK frames) and writes one
``{"event": "drift", ...}`` line; it re-arms only when the statistic is back inside the band by
``MARGIN`` (0.15): hysteresis, so a statistic hovering at the bound fires once, not per frame.
The return is logged as ``drift_cleared``. A shift so large that every frame is NG leaves no OK
frame to measure: that shows in the NG counter instead.

**Metrics** (labels ``camera``, ``model``; ``prometheus-client`` is the optional ``monitor``
extra)::

    stpm_frames_total               frames inspected
    stpm_ng_total                   NG verdicts
    stpm_dropped_frames_total       frames a live queue dropped (inference slower than the camera)
    stpm_reconnects_total           reconnect attempts
    stpm_corrupt_frames_total       unreadable frames skipped
    stpm_source_lost_frames_total   frames the device reported lost
    stpm_latency_seconds            histogram: model call per frame's batch
    stpm_e2e_seconds                histogram: capture -> result logged
    stpm_drift                      gauge: the drift statistic above (NaN until measured)
    stpm_drift_alarm                gauge: 1 while the drift alarm is on
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from stpm_edge.errors import ConfigError, note

logger = logging.getLogger(__name__)

HIGH, LOW, MARGIN = 0.6, -1.0, 0.15
WINDOW, MIN_FRAMES = 50, 10
# seconds; from a fast GPU frame to a stalled CPU one
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DriftMonitor:
    """Rolling median of OK-frame scores against the calibration (see the module docstring).

    Args:
        score_min: the calibration's lowest score (0 on the drift scale).
        threshold: the image threshold (1 on the drift scale).
        window: OK frames in the rolling window; ``min_frames``: needed before any statistic.
        low, high, margin: the alarm band and the hysteresis margin, in drift units.
    """

    def __init__(
        self,
        score_min: float,
        threshold: float,
        window: int = WINDOW,
        min_frames: int = MIN_FRAMES,
        low: float = LOW,
        high: float = HIGH,
        margin: float = MARGIN,
    ) -> None:
        self.score_min = float(score_min)
        # a degenerate calibration (threshold at the minimum) still gets a finite scale
        self.scale = max(float(threshold) - self.score_min, 1e-12 + 1e-6 * abs(float(threshold)))
        self.min_frames = max(1, min(min_frames, window))
        self.low, self.high, self.margin = low, high, margin
        self._scores: collections.deque[float] = collections.deque(maxlen=window)
        self.statistic = float("nan")
        self.alarm = False

    @classmethod
    def from_calibration(
        cls, calibration: Mapping[str, Any], image_threshold: float, **kwargs: Any
    ) -> DriftMonitor:
        """Build from a model's ``stpm.calibration`` dict (``score_min`` 0 when absent)."""
        threshold = calibration.get("image_threshold", image_threshold)
        score_min = calibration.get("score_min", 0.0)
        if not isinstance(score_min, (int, float)) or not isinstance(threshold, (int, float)):
            score_min, threshold = 0.0, image_threshold
        return cls(float(score_min), float(threshold), **kwargs)

    @property
    def median_score(self) -> float:
        return float(np.median(self._scores)) if self._scores else float("nan")

    def update(self, score: float) -> str | None:
        """Add one OK frame's raw score; returns ``"drift"`` when the alarm starts,
        ``"drift_cleared"`` when it ends, else None."""
        if not math.isfinite(score):
            return None
        self._scores.append(float(score))
        if len(self._scores) < self.min_frames:
            return None
        self.statistic = (self.median_score - self.score_min) / self.scale
        outside = not self.low <= self.statistic <= self.high
        inside = self.low + self.margin <= self.statistic <= self.high - self.margin
        if outside and not self.alarm:
            self.alarm = True
            return "drift"
        if inside and self.alarm:
            self.alarm = False
            return "drift_cleared"
        return None


class DriftObserver:
    """Feeds one camera's OK frames to its :class:`DriftMonitor`; writes the drift events via
    ``emit`` (the loop's ``event``)."""

    def __init__(self, monitor: DriftMonitor, emit: Callable[..., None]) -> None:
        self.monitor, self._emit = monitor, emit

    def on_frame(self, camera: str, frame: Any, prediction: Any, record: dict[str, Any]) -> None:
        if record.get("verdict") != "OK":
            return
        change = self.monitor.update(float(record["score"]))
        if change is not None:
            self._emit(
                change,
                drift=round(self.monitor.statistic, 4),
                median_score=round(self.monitor.median_score, 6),
                band=[self.monitor.low, self.monitor.high],
                frame=record.get("frame"),
            )

    def on_event(self, camera: str, record: dict[str, Any]) -> None:
        pass


def _import_prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core  # the metric families of collect()
    except ImportError as exc:
        raise ConfigError(
            note(
                "--metrics-port needs the prometheus-client package",
                "pip install 'stpm-edge[monitor]' (or pip install prometheus-client)",
            )
        ) from exc
    return prometheus_client


class Metrics:
    """The Prometheus metrics of a run (a registry of its own); an observer of every camera.

    Call :meth:`watch` once per camera before the run, then :meth:`serve`.
    """

    LABELS = ("camera", "model")

    def __init__(self) -> None:
        pc = _import_prometheus()
        self._pc = pc
        self.registry = pc.CollectorRegistry()
        r, labels = self.registry, self.LABELS
        self.frames = pc.Counter("stpm_frames", "frames inspected", labels, registry=r)
        self.ng = pc.Counter("stpm_ng", "NG verdicts", labels, registry=r)
        self.reconnects = pc.Counter("stpm_reconnects", "reconnect attempts", labels, registry=r)
        self.corrupt = pc.Counter("stpm_corrupt_frames", "unreadable frames", labels, registry=r)
        self.latency = pc.Histogram(
            "stpm_latency_seconds", "model call", labels, buckets=BUCKETS, registry=r
        )
        self.e2e = pc.Histogram(
            "stpm_e2e_seconds", "capture to result", labels, buckets=BUCKETS, registry=r
        )
        self._cameras: dict[str, tuple[str, Any, DriftMonitor | None]] = {}
        self.registry.register(self)  # collect(): the values read at scrape time
        self._server: Any = None

    def watch(self, camera: str, model: str, loop: Any, drift: DriftMonitor | None) -> None:
        """Export ``camera`` (its loop's queue drops and lost frames, its drift statistic)."""
        self._cameras[camera] = (model, loop, drift)
        for metric in (self.frames, self.ng, self.reconnects, self.corrupt):
            metric.labels(camera, model)  # every series exists from the start, at 0

    def _model(self, camera: str) -> str:
        return self._cameras.get(camera, ("",))[0]

    # -- observer --------------------------------------------------------------------------------
    def on_frame(self, camera: str, frame: Any, prediction: Any, record: dict[str, Any]) -> None:
        labels = (camera, self._model(camera))
        self.frames.labels(*labels).inc()
        if record.get("verdict") == "NG":
            self.ng.labels(*labels).inc()
        latency = float(record.get("latency_ms", float("nan")))
        if math.isfinite(latency):
            self.latency.labels(*labels).observe(latency / 1000.0)
        self.e2e.labels(*labels).observe(float(record.get("e2e_ms", 0.0)) / 1000.0)

    def on_event(self, camera: str, record: dict[str, Any]) -> None:
        name = record.get("event")
        if name == "reconnect":
            self.reconnects.labels(camera, self._model(camera)).inc()
        elif name == "corrupt":
            self.corrupt.labels(camera, self._model(camera)).inc()

    # -- scrape-time values ----------------------------------------------------------------------
    def collect(self) -> Iterator[Any]:
        """Values owned by the loops, read when Prometheus scrapes (a custom collector)."""
        core = self._pc.core
        drops = core.CounterMetricFamily(
            "stpm_dropped_frames", "frames dropped by a full live queue", labels=self.LABELS
        )
        lost = core.CounterMetricFamily(
            "stpm_source_lost_frames", "frames the device reported lost", labels=self.LABELS
        )
        drift = core.GaugeMetricFamily(
            "stpm_drift", "OK-score median on the calibration scale", labels=self.LABELS
        )
        alarm = core.GaugeMetricFamily("stpm_drift_alarm", "1 while drifted", labels=self.LABELS)
        for camera, (model, loop, monitor) in list(self._cameras.items()):
            drops.add_metric([camera, model], float(loop.drops))
            lost.add_metric([camera, model], float(loop.stats.source_lost))
            if monitor is not None:
                drift.add_metric([camera, model], monitor.statistic)
                alarm.add_metric([camera, model], float(monitor.alarm))
        yield from (drops, lost, drift, alarm)

    def describe(self) -> list[Any]:
        return []  # no fixed description: registering must not call collect() early

    # -- HTTP ------------------------------------------------------------------------------------
    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (port 0: a free one); returns the port."""
        try:
            result = self._pc.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                note(
                    f"--metrics-port {port}: cannot listen on {host} ({exc.strerror or exc})",
                    "choose a free port (or 0), or another --metrics-host",
                )
            ) from exc
        self._server = result[0] if isinstance(result, tuple) else None
        return int(self._server.server_port) if self._server is not None else port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def parse_band(text: str | None) -> tuple[float, float]:
    """``--drift-band LOW,HIGH`` -> (low, high); None: the defaults."""
    if text is None:
        return LOW, HIGH
    try:
        low, high = (float(v) for v in str(text).split(","))
    except ValueError:
        low = high = float("nan")
    if not low + 2 * MARGIN < high:  # also false for NaN
        raise ConfigError(
            note(
                f"--drift-band {text!r}",
                f"expected LOW,HIGH with LOW + {2 * MARGIN} < HIGH, e.g. {LOW},{HIGH}",
            )
        )
    return low, high


def attach_monitoring(
    loops: Mapping[str, Any],
    models: Mapping[str, str],
    port: int | None,
    host: str,
    band: tuple[float, float] = (LOW, HIGH),
) -> Metrics | None:
    """Drift watch on every camera; with ``port``, Prometheus metrics served on ``host:port``."""
    metrics = Metrics() if port is not None else None
    for camera, loop in loops.items():
        info = getattr(loop.detector, "info", None)
        monitor = None
        if info is not None:
            monitor = DriftMonitor.from_calibration(
                info.calibration, info.image_threshold, low=band[0], high=band[1]
            )
            loop.add_observer(DriftObserver(monitor, loop.event))
        if metrics is not None:
            metrics.watch(camera, models[camera], loop, monitor)
            loop.add_observer(metrics)
    if metrics is not None:
        bound = metrics.serve(port, host)
        logger.info("metrics: http://%s:%d/metrics", host, bound)
    return metrics
