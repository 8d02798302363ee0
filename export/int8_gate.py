"""The INT8 accuracy gate: an INT8 graph must score the labelled test set like its FP32 graph.

Both exported graphs run on the same engine settings over a category's test split (good and
defective images, ground-truth masks); image AUROC may drop by at most
:data:`IMAGE_AUROC_TOLERANCE` and pixel AUROC by at most :data:`PIXEL_AUROC_TOLERANCE` (issue 12),
else :func:`require_gate` fails the export with the measured loss.

The graphs run through the torch-free runtime (``create_runner``), with frames prepared exactly as
the camera prepares them (``prepare_batch``), so the gate measures what a deployment gets.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stpm_edge.errors import ExportError, note

logger = logging.getLogger(__name__)

IMAGE_AUROC_TOLERANCE = 0.005
PIXEL_AUROC_TOLERANCE = 0.002


@dataclass
class GateResult:
    """FP32 and INT8 AUROCs on one test split and whether the INT8 graph passes."""

    images: int
    fp32_image_auroc: float
    int8_image_auroc: float
    fp32_pixel_auroc: float
    int8_pixel_auroc: float

    @property
    def image_loss(self) -> float:
        return self.fp32_image_auroc - self.int8_image_auroc

    @property
    def pixel_loss(self) -> float:
        return self.fp32_pixel_auroc - self.int8_pixel_auroc

    @property
    def passed(self) -> bool:
        return bool(
            self.image_loss <= IMAGE_AUROC_TOLERANCE and self.pixel_loss <= PIXEL_AUROC_TOLERANCE
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "image_loss": self.image_loss, "pixel_loss": self.pixel_loss,
                "passed": self.passed}  # fmt: skip

    def summary(self) -> str:
        return (
            f"INT8 gate on {self.images} test images: image AUROC {self.fp32_image_auroc:.4f} -> "
            f"{self.int8_image_auroc:.4f} (loss {self.image_loss:+.4f}, limit "
            f"{IMAGE_AUROC_TOLERANCE}), pixel AUROC {self.fp32_pixel_auroc:.4f} -> "
            f"{self.int8_pixel_auroc:.4f} (loss {self.pixel_loss:+.4f}, limit "
            f"{PIXEL_AUROC_TOLERANCE}): {'pass' if self.passed else 'FAIL'}"
        )


def _test_split(data_root: str | Path, category: str) -> list[Any]:
    from stpm_edge.data.mvtec import MVTecCategory

    samples = MVTecCategory(data_root, category).test()
    if not any(s.label for s in samples) or all(s.label for s in samples):
        raise ExportError(
            note(
                f"the INT8 gate needs good and defective test images in {data_root}/{category}",
                "pass a labelled MVTec-layout dataset (stpm-data demo writes one)",
            )
        )
    return samples


def score_split(
    model: str | Path, samples: list[Any], backend: str = "ort-cpu", threads: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, scores, masks, maps)`` of one exported graph on ``samples``, at the map size,
    computed as the graph's target computes them (``runtime.check_arithmetic``)."""
    from stpm_edge.runtime.check_arithmetic import check_runner
    from stpm_edge.runtime.image import decode_bgr, read_mask, resize_mask
    from stpm_edge.runtime.metadata import parse_metadata
    from stpm_edge.runtime.preprocess import prepare_batch

    labels, scores, masks, maps = [], [], [], []
    with check_runner(model, backend=backend, threads=threads) as runner:
        info = parse_metadata(runner.metadata())
        name = next(iter(runner.input_spec()))
        for sample in samples:
            bgr = decode_bgr(Path(sample.path))  # the frame as a camera delivers it
            out = runner.infer({name: prepare_batch([bgr], info)})
            amap = out["anomaly_map"][0, 0]
            height, width = amap.shape
            if sample.mask_path is not None:
                mask = resize_mask(read_mask(sample.mask_path), (height, width))
            else:
                mask = np.zeros((height, width), bool)
            labels.append(sample.label)
            scores.append(float(out["score"][0]))
            masks.append(mask)
            maps.append(amap)
    return np.asarray(labels), np.asarray(scores), np.stack(masks), np.stack(maps)


def _aurocs(model: str | Path, samples: list[Any], backend: str, threads: int | None) -> tuple:
    from stpm_edge.metrics import auroc

    labels, scores, masks, maps = score_split(model, samples, backend, threads)
    return auroc(labels, scores), auroc(masks.ravel(), maps.ravel())


def accuracy_gate(
    fp32_model: str | Path,
    int8_model: str | Path,
    data_root: str | Path,
    category: str,
    backend: str = "ort-cpu",
    int8_backend: str | None = None,
    threads: int | None = None,
) -> GateResult:
    """Image/pixel AUROC of both graphs on ``data_root/category``'s test split.

    Args:
        fp32_model, int8_model: the exported graphs.
        backend: engine of the FP32 graph (and of the INT8 one unless ``int8_backend``); an INT8
            graph for ``--target openvino`` is best gated on ``openvino``, where it will run.
    """
    samples = _test_split(data_root, category)
    fp32 = _aurocs(fp32_model, samples, backend, threads)
    int8 = _aurocs(int8_model, samples, int8_backend or backend, threads)
    result = GateResult(len(samples), fp32[0], int8[0], fp32[1], int8[1])
    logger.info("%s", result.summary())
    return result


def require_gate(result: GateResult, what: str = "INT8 export") -> None:
    """Raise :class:`ExportError` with the measured loss when ``result`` fails."""
    if not result.passed:
        raise ExportError(
            note(
                f"{what} fails the accuracy gate: {result.summary()}",
                "calibrate on more good images (--calib), try --calib-method percentile or "
                "another --target, or deploy the fp32/fp16 graph",
            )
        )


def gate_backend(target: str) -> str:
    """The engine an INT8 graph of ``target`` is gated on: where it will run, when installed here
    (OpenVINO for ``openvino``); ONNX Runtime CPU otherwise (for ``tensorrt`` its Q/DQ pairs as
    written, TensorRT's arithmetic, ``runtime.check_arithmetic``: TensorRT is not on this machine)."""
    if target == "openvino":
        from stpm_edge.runtime.runners import available_backends

        if "openvino" in available_backends():
            return "openvino"
    return "ort-cpu"


def gate_graphs(
    fp32_graph: Any, int8_graph: Any, data_root: str | Path, category: str, target: str = "cpu"
) -> GateResult:
    """:func:`accuracy_gate` on in-memory graphs (``onnx.ModelProto``), as ``stpm-export`` has
    them before writing: both are saved to a temporary folder first."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(fp32_graph, str(fp32_path))
        onnx.save(int8_graph, str(int8_path))
        return accuracy_gate(
            fp32_path, int8_path, data_root, category, int8_backend=gate_backend(target)
        )
