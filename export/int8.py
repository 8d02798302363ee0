"""INT8: static post-training quantisation of the FP32 fused graph (ONNX in, ONNX out), per target.

ONNX Runtime's quantisation tooling in QDQ format. Only the backbones are quantised —
convolutions (per-channel weights), residual additions, and the ReLU6 clips and paddings between
them. Pre-processing and the distance tail — normalisation, distances, upsampling, product,
score — stay float32, because their small values are exactly what 8 bits cannot hold. Of the
backbones, every target keeps each network's stem and the backbone's registered ``int8_float``
modules in float32 (efficientnet_lite0: the blocks up to its stride-8 feature, whose 8-bit
activations cost up to 0.038 image AUROC on the benchmark; ``float_nodes``) — except an integer
stem: for resnet18 the cpu and openvino targets build the graph with the stems reading x - 128
(``GraphOptions.integer_stem``, ``wants_integer_stem``), whole numbers that one byte at scale 1
holds exactly, and quantise them; only their weights are rounded.

Weights of the cpu and openvino targets are 7-bit (``PAIR_SAFE_WEIGHT``): x86 CPUs without VNNI
add pairs of u8 x s8 products in int16, which 8-bit weights saturate, so an 8-bit graph scores
differently on an AVX2 CPU than on a VNNI one.

One graph cannot mean the same and run fast on both runtimes, so the file is written for a target
(recorded as ``stpm.int8_target``):

- ``cpu`` (ONNX Runtime on a CPU): unsigned 8-bit activations with zero points (U8S8), int32
  biases, and the ReLU6 Clips folded into the uint8 range — ONNX Runtime fuses each
  DequantizeLinear -> Conv -> QuantizeLinear into one integer kernel with no requantise pair in
  between (leaving Clip and Pad in float cost 44 such pairs and all of the speed-up, and 5 points
  of image AUROC on the demo set). The residual additions that write the features stay float
  and the tail reads them there (``tail_reads_float``). TensorRT must NOT read this file: its
  parser re-types a uint8 zero point as INT8, so a Clip [0, 6] folded into uint8 saturation
  silently becomes about [-3, 3], and int32 DequantizeLinear is rejected.
- ``tensorrt`` (TensorRT explicit quantisation): signed INT8 activations and weights, symmetric
  (every zero point 0), per-channel weights, float biases (no int32 DequantizeLinear), and every
  ReLU6 Clip kept as a node between its Q/DQ pairs, so its [0, 6] means the same to any reader.
  On ONNX Runtime CPU this graph is correct but slow (measured 2.8x the cpu graph's latency, the
  float Clips force dequantise/requantise pairs) — hence two targets.
- ``openvino``: NNCF's ONNX backend (``stpm_edge.export.int8_nncf``), the one dispatch point below.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from stpm_edge.errors import ConfigError, ExportError, note
from stpm_edge.export.int8_graph import (
    backbone_nodes,
    feature_writers,
    float_nodes,
    integer_stem,
    stem_inputs,
    tail_reads_float,
)

logger = logging.getLogger(__name__)


class FrameReader:
    """ONNX Runtime ``CalibrationDataReader`` over uint8 frames (N, H, W, 3), one batch at a time."""

    def __init__(
        self, frames: np.ndarray, input_name: str = "image", batch: int = 1, progress: bool = True
    ) -> None:
        self.frames, self.input_name, self.batch = frames, input_name, batch
        self._iter: Iterator[dict[str, np.ndarray]] | None = None
        self._progress = progress

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        from tqdm import tqdm

        starts = range(0, len(self.frames), self.batch)
        for start in tqdm(
            starts, desc="INT8 calibration", unit="batch", disable=not self._progress, leave=False
        ):
            yield {self.input_name: self.frames[start : start + self.batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = self._batches()
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = None


def wants_integer_stem(backbone: str, target: str) -> bool:
    """Whether an INT8 export for ``target`` builds its graph with ``integer_stem`` and quantises
    the stems: the CPU targets, for backbones whose stem feeds quantised layers (a stem before
    float ``int8_float`` modules would gain nothing). TensorRT keeps its float stems (a GPU's
    stem costs little)."""
    from stpm_edge.backbones import get_backbone_spec

    return target in ("cpu", "openvino") and not get_backbone_spec(backbone).int8_float


def exact_stem_overrides(model: onnx.ModelProto, activation_type: str) -> dict:
    """ONNX Runtime ``TensorQuantOverrides`` that quantise an integer stem's input at scale 1
    (zero point 128 for uint8, 0 for int8): every value of [-128, 127] maps to itself, where a
    calibrated range (about 1.08 per step on images spanning it) rounds each pixel by up to half a
    step. The int32 biases are quantised with the same scale. Empty for other graphs."""
    if not integer_stem(model):
        return {}
    zero = np.array(128, np.uint8) if activation_type == "QUInt8" else np.array(0, np.int8)
    exact = [{"scale": np.array(1.0, np.float32), "zero_point": zero}]
    return {name: exact for name in stem_inputs(model)}


# Histogram bins of --calib-method entropy. quantize_static builds its entropy histogram with 128
# bins, as many as the quantised grid it searches over, so the only range it can choose is the
# whole one: its graphs came out byte-identical to minmax's (demo brick; benchmark pcb). With 2048
# bins the KL search chooses among 961 clipping ranges (TensorRT's recipe); about 100 s for the
# ~180 tensors of a fused efficientnet_lite0 graph on 2 CPU cores.
ENTROPY_BINS = 2048


def entropy_overrides(
    model_path: Path, op_types: Sequence[str], reader: FrameReader, num_bins: int = ENTROPY_BINS
) -> dict:
    """``TensorQuantOverrides`` (``rmin``/``rmax``) with ONNX Runtime's entropy calibration at
    ``num_bins`` bins, for every tensor it calibrates in ``model_path``; ``reader`` is rewound."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(
            model_path,
            list(op_types),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy,
            extra_options={"num_bins": num_bins, "num_quantized_bins": 128},
        )
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
    reader.rewind()
    overrides = {}
    for name, data in ranges.data.items():
        low, high = data.range_value
        overrides[name] = [{"rmin": np.array(low, np.float32), "rmax": np.array(high, np.float32)}]
    return overrides


INT8_TARGETS = ("cpu", "tensorrt", "openvino")


@dataclass(frozen=True)
class QuantRecipe:
    """ONNX Runtime ``quantize_static`` settings of one INT8 target."""

    activation_type: str  # QuantType member name
    extra_options: dict
    # keep each network's first convolution in float32: it reads the frame itself (x - 255 mean,
    # scale folded into its weights), where an 8-bit activation grid costs the most. On the demo,
    # U8S8 with quantised stems lost 0.006 image AUROC on gravel. An integer stem's input is exact
    # in 8 bits, so it is quantised instead (``integer_stem``). The backbone's ``int8_float``
    # modules stay float32 too (its registry entry says what they are and why).
    float_head: bool = False
    # 7-bit weights ([-64, 64]) so the graph means the same on every x86 CPU. Without VNNI (AVX2,
    # AVX-512 before Cascade Lake) the integer kernels multiply u8 x s8 pairs and add each pair
    # into int16 (VPMADDUBSW), which saturates above 32767: 255 * 127 * 2 does not fit, 255 * 64 * 2
    # does. Measured with the default's grass checkpoint (seed 1) on QEMU's Haswell CPU: 8-bit
    # weights moved the score 7-9 % away from float32 there against 2 % on this VNNI CPU; 7-bit
    # weights give the same output, to the bit, on both, at the same speed. (Unsigned weights,
    # U8U8, do not saturate either but ran 3.3x slower here.)
    reduce_range: bool = False
    # the features stay float32 where they are written (efficientnet_lite0's residual additions
    # are not quantised) and the tail reads them there, not through an 8-bit copy
    # (``feature_writers``, ``tail_reads_float``). Not for TensorRT: a float reader beside the
    # next layer's quantiser would keep it from fusing the addition into the convolution before,
    # which no GPU here could measure.
    tail_reads_float: bool = False


RECIPES = {
    "cpu": QuantRecipe(
        "QUInt8",
        {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": True},
        float_head=True,
        reduce_range=True,
        tail_reads_float=True,
    ),
    # TensorRT: "`y_zero_point` must be 0" (QuantizeLinear), DequantizeLinear takes INT8/FP8/INT4
    # only (onnx-tensorrt docs/operators.md); QDQKeepRemovableActivations keeps the ReLU6 Clips.
    "tensorrt": QuantRecipe(
        "QInt8",
        {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "QDQKeepRemovableActivations": True,
        },
        # the same float head as cpu: on the benchmark (seed 0, checked on ONNX Runtime) it took
        # this graph's loss from -0.038 image AUROC (label) to -0.0007
        float_head=True,
    ),
}


def check_target(target: str) -> None:
    if target not in INT8_TARGETS:
        raise ConfigError(
            note(f"INT8 target {target!r} is unknown", f"use one of {', '.join(INT8_TARGETS)}")
        )


def quantize_int8(
    fp32_model: onnx.ModelProto,
    calibration_frames: np.ndarray,
    method: str = "minmax",
    quantize_adds: bool = True,
    progress: bool = True,
    target: str = "cpu",
) -> onnx.ModelProto:
    """Quantise a fused FP32 graph for ``target`` with calibration frames (the graph's input
    layout). The caller records ``target`` in the metadata (``stpm.int8_target``)."""
    check_target(target)
    if len(calibration_frames) == 0:
        raise ExportError(
            note(
                "INT8 calibration has no images",
                "pass --calib DIR with good images (50-300 is plenty)",
            )
        )
    if target == "openvino":  # NNCF places the Q/DQ pairs for OpenVINO's CPU plugin
        from stpm_edge.export.int8_nncf import quantize_nncf

        return quantize_nncf(fp32_model, calibration_frames)
    return _quantize_ort(
        fp32_model, calibration_frames, RECIPES[target], method, quantize_adds, progress
    )


def _quantize_ort(
    fp32_model: onnx.ModelProto,
    calibration_frames: np.ndarray,
    recipe: QuantRecipe,
    method: str,
    quantize_adds: bool,
    progress: bool,
) -> onnx.ModelProto:
    """ONNX Runtime static QDQ quantisation of the backbone nodes with ``recipe``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    op_types = ("Conv", "Add", "Clip", "Pad") if quantize_adds else ("Conv", "Clip", "Pad")
    inside, outside = backbone_nodes(fp32_model, op_types)
    if recipe.float_head:
        head = float_nodes(fp32_model, inside)
        inside, outside = [n for n in inside if n not in head], outside + head
    if recipe.tail_reads_float:
        writers = feature_writers(fp32_model, inside)
        inside, outside = [n for n in inside if n not in writers], outside + writers
    if not inside:
        raise ExportError("INT8: no backbone convolution found to quantise (unexpected graph)")
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(fp32_model, src)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        reader = FrameReader(calibration_frames, progress=progress)
        overrides = exact_stem_overrides(fp32_model, recipe.activation_type)
        if method == "entropy":  # ranges from a finer histogram than quantize_static's (above)
            overrides = entropy_overrides(pre, op_types, reader) | overrides
        quantize_static(
            str(pre),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=outside,
            per_channel=True,
            reduce_range=recipe.reduce_range,
            activation_type=getattr(QuantType, recipe.activation_type),
            weight_type=QuantType.QInt8,
            # entropy's ranges arrive as overrides; the minmax pass beneath them is not used
            calibrate_method=methods["minmax" if method == "entropy" else method],
            extra_options=dict(recipe.extra_options) | {"TensorQuantOverrides": overrides},
        )
        quantized = onnx.load(dst)
    if recipe.tail_reads_float:
        tail_reads_float(quantized)
    logger.info(
        "INT8: quantised %d nodes, kept %d %s nodes of the tail in float32",
        len(inside),
        len(outside),
        "/".join(op_types),
    )
    return quantized
