"""The anomaly detector: runner + numpy pre/post-processing (DESIGN.md §7).

    with AnomalyDetector("model.onnx") as det:
        [pred] = det.predict(cv2.imread("part.png"))
        print(pred.verdict, pred.score_normalized)

Frames are OpenCV BGR uint8. The graph computes the score and its normalisation, so the verdict
here is exactly the exported model's: ``NG`` iff ``score_normalized >= 0.5``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stpm_edge.errors import BackendError, DataError, note

from .metadata import ModelInfo, parse_metadata
from .preprocess import Roi, crop_roi, parse_roi, prepare_batch, to_bgr
from .runners import Runner, create_runner
from .runners.base import ClosesOnExit
from .visualize import draw_regions, find_regions, heatmap_overlay, scale_regions

logger = logging.getLogger(__name__)

NG_THRESHOLD = 0.5  # score_normalized maps the calibrated threshold to 0.5 (DESIGN.md §4)


@dataclass
class Prediction:
    """The detector's answer for one frame.

    Attributes:
        score: raw image score (graph output ``score``).
        score_normalized: ``clip((score - thr) / (max - min) + 0.5, 0, 1)`` from the graph.
        verdict: ``"NG"`` iff ``score_normalized >= 0.5``, else ``"OK"``.
        anomaly_map: float32 (H, W) at the model's input size (raw units).
        overlay: uint8 BGR (frame H, frame W, 3) heat-map overlay with region boxes, or ``None``.
        regions: ``(x, y, w, h, area)`` in frame pixels where the map >= pixel_threshold, or
            ``None`` when not requested.
        latency_ms: host-to-host time of the runner call that produced this prediction (the
            whole batch's call when frames were batched).
    """

    score: float
    score_normalized: float
    verdict: str
    anomaly_map: np.ndarray
    overlay: np.ndarray | None = None
    regions: list[tuple[int, int, int, int, int]] | None = None
    latency_ms: float = float("nan")

    @property
    def is_ng(self) -> bool:
        return self.verdict == "NG"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        out: dict[str, Any] = {
            "score": float(self.score),
            "score_normalized": float(self.score_normalized),
            "verdict": self.verdict,
            "latency_ms": round(float(self.latency_ms), 3),
        }
        if self.regions is not None:
            out["regions"] = [list(r) for r in self.regions]
        return out


def as_frame_list(frames: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """One frame (H, W) / (H, W, C), a batch (N, H, W, C), or a list -> list of frames."""
    if isinstance(frames, np.ndarray):
        if frames.ndim == 4:
            return list(frames)
        if frames.ndim in (2, 3):
            return [frames]
        raise DataError(
            note(f"frames of shape {frames.shape}", "expected (H, W, 3), (N, H, W, 3) or a list")
        )
    return list(frames)


class AnomalyDetector(ClosesOnExit):
    """Score frames with an exported STPM model.

    Args:
        model: path to ``model.onnx`` / ``model.engine``, or a :class:`Runner` (loaded or not;
            the detector closes only runners it created).
        backend: ``"auto"`` or a backend name (see :func:`runners.create_runner`).
        threads: CPU threads for ONNX Runtime.
        roi: fixed crop ``(x, y, w, h)`` (or ``"x,y,w,h"``) in frame pixels, applied first.
        min_region_area: smallest region kept, in anomaly-map (model) pixels.
        **runner_kwargs: passed to the runner constructor.
    """

    def __init__(
        self,
        model: str | os.PathLike | Runner,
        backend: str = "auto",
        threads: int | None = None,
        roi: Roi | str | None = None,
        min_region_area: int = 16,
        **runner_kwargs: Any,
    ) -> None:
        self._owns_runner = not isinstance(model, Runner)
        self.runner = (
            create_runner(model, backend=backend, threads=threads, **runner_kwargs)
            if self._owns_runner
            else model
        )
        self.model_path = None if isinstance(model, Runner) else str(model)
        self.roi = parse_roi(roi)
        self.min_region_area = int(min_region_area)
        self.runner.load()
        try:
            self.info: ModelInfo = self._read_info()
        except BaseException:
            self.close()
            raise
        self.vmin, self.vmax = self._color_range()
        logger.info(
            "detector: %s on %s, input %s %s",
            self.model_path,
            self.runner.name,
            self.info.input_format,
            self.info.input_size,
        )

    def _read_info(self) -> ModelInfo:
        spec = self.runner.input_spec()
        source = self.model_path or self.runner.name
        if len(spec) != 1:
            raise BackendError(
                note(
                    f"{source}: model has inputs {list(spec)}",
                    "an stpm-export graph has one input 'image'",
                )
            )
        info = parse_metadata(self.runner.metadata(), next(iter(spec)), source)
        outputs = self.runner.output_names()
        missing = [o for o in ("anomaly_map", "score", "score_normalized") if o not in outputs]
        if missing:
            raise BackendError(
                note(f"{source}: outputs {missing} missing", "re-export the model with stpm-export")
            )
        return info

    def _color_range(self) -> tuple[float, float]:
        """Overlay colour range: the calibration's score range, else [0, 2 * pixel_threshold]."""
        cal = self.info.calibration
        lo, hi = cal.get("score_min"), cal.get("score_max")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and hi > lo:
            return float(lo), float(hi)
        return 0.0, max(2.0 * self.info.pixel_threshold, 1e-6)

    @property
    def name(self) -> str:
        return self.runner.name

    def predict(
        self,
        frames: np.ndarray | Sequence[np.ndarray],
        overlay: bool = False,
        regions: bool = False,
    ) -> list[Prediction]:
        """Score one frame or a batch.

        Args:
            frames: a BGR frame (H, W, 3), a batch (N, H, W, 3) or a list of frames (any sizes).
            overlay: also render :attr:`Prediction.overlay` (frame size, BGR).
            regions: also compute :attr:`Prediction.regions` (frame pixels).

        Returns:
            one :class:`Prediction` per frame, in order. Batches larger than the runner's maximum
            batch (an engine's profile) are split into several calls.
        """
        items = as_frame_list(frames)
        step = self.runner.max_batch_size() or len(items) or 1
        preds: list[Prediction] = []
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            batch = prepare_batch(chunk, self.info, self.roi)
            out = self.runner.infer({self.info.input_name: batch})
            latency = self.runner.last_inference_ms
            maps = np.asarray(out["anomaly_map"], dtype=np.float32).reshape(
                len(chunk), *self.info.input_size
            )
            scores = np.asarray(out["score"], dtype=np.float32).reshape(-1)
            normed = np.asarray(out["score_normalized"], dtype=np.float32).reshape(-1)
            for i, frame in enumerate(chunk):
                pred = Prediction(
                    score=float(scores[i]),
                    score_normalized=float(normed[i]),
                    verdict="NG" if normed[i] >= NG_THRESHOLD else "OK",
                    anomaly_map=maps[i],
                    latency_ms=latency,
                )
                if overlay or regions:
                    self.explain(frame, pred, overlay=overlay)
                preds.append(pred)
        return preds

    def explain(self, frame: np.ndarray, pred: Prediction, overlay: bool = True) -> Prediction:
        """Fill ``pred.regions`` (frame pixels) and, with ``overlay``, ``pred.overlay``.

        Cheap enough to call only for NG frames (what ``stpm-camera --save-ng`` does).
        """
        bgr = to_bgr(frame)
        x, y, w, h = self.roi or (0, 0, bgr.shape[1], bgr.shape[0])
        map_h, map_w = pred.anomaly_map.shape
        found = find_regions(pred.anomaly_map, self.info.pixel_threshold, self.min_region_area)
        pred.regions = scale_regions(found, w / map_w, h / map_h, x, y)
        if overlay:
            image = bgr.copy()
            crop = crop_roi(bgr, self.roi)
            image[y : y + h, x : x + w] = heatmap_overlay(
                crop, pred.anomaly_map, self.vmin, self.vmax, alpha=0.5, color_order="BGR"
            )
            pred.overlay = draw_regions(image, pred.regions)
        return pred

    def close(self) -> None:
        """Release the runner if the detector created it."""
        if self._owns_runner:
            self.runner.close()


Detector = AnomalyDetector  # the name DESIGN.md §7 uses
