"""The fused graph: pre-processing + teacher + student + anomaly map + scores, as ONE ONNX file.

Input ``image`` is uint8 (N, H, W, 3) in the configured colour order (BGR by default, what a camera
frame from OpenCV or a GStreamer appsink is) — or float32 (N, 3, H, W) already normalised. The
outputs and the ``stpm.*`` metadata are the contract of DESIGN.md §5.

Two layouts with identical outputs:
- ``separate``: teacher and student side by side (two convolutions per layer).
- ``stacked``: both networks in one of grouped convolutions — the stem is a single convolution
  producing both nets' channels, every later convolution has twice the groups — so each layer
  is one kernel launch for both. Launch overhead dominates at batch 1 on a GPU.

FP16: the backbones run in float16 and everything after them (normalisation, distances,
upsampling, product, score) in float32, with explicit Cast nodes between — the anomaly-map
functions cast to float32 themselves. Weights are stored in float16; graph I/O stays uint8/float32.

TensorRT accepts every graph by construction, checked on each export by
:mod:`stpm_edge.export.trt_check` (its documented ONNX-parser limits):
- the uint8 input feeds a Cast first (TensorRT takes uint8 only as a network input into a Cast;
  the NHWC->NCHW Transpose and the BGR->RGB Slice run on float);
- the top-k score never asks TopK for K >= 3840 (TensorRT's limit; the top-1 % of a 1024x1024 map
  is K = 10486): ``anomaly_map.image_score`` sums the k largest values over TopK rounds of at most
  3839, masking each round's picks by index (ScatterElements) — exact, ties included, and the
  plain one-TopK mean wherever K <= 3839. Chosen over a top-k of a max-pooled map or a sort-free
  threshold search because it gives the same number as training and evaluation, not an estimate.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from stpm_edge import __version__, colour_map, score_baseline
from stpm_edge import anomaly_map as am
from stpm_edge.backbones import get_backbone_spec
from stpm_edge.errors import ConfigError, ExportError, note
from stpm_edge.model import STPM

logger = logging.getLogger(__name__)

OUTPUT_NAMES = ["anomaly_map", "score", "score_normalized"]
SCALE_MAP_NAMES = ["scale_map_0", "scale_map_1", "scale_map_2"]
LAYOUTS = ("separate", "stacked")
OPSET = 17
THRESHOLD_NAME, SCALE_NAME = "calibration_threshold", "calibration_scale"


@dataclass(frozen=True)
class GraphOptions:
    """How the graph is built; every field ends up in the metadata."""

    input_format: str = "uint8_nhwc"  # or "float32_nchw"
    color_order: str = "BGR"  # of a uint8 input
    layout: str = "separate"
    precision: str = "fp32"  # "fp16" runs the backbones in half precision
    per_scale_maps: bool = False
    opset: int = OPSET
    # the stems read whole numbers x - 128 in [-128, 127], so an 8-bit quantiser holds their input
    # exactly (export.int8 quantises such a stem; see shift_stem_input). FP32 uint8 input only.
    integer_stem: bool = False
    # per student stream, the factor that brings it to the teacher's range before stacking
    # (stacked INT8: one scale per tensor holds both networks; export.stream_ranges). () = none
    student_stream_scales: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        checks = {
            "input_format": ("uint8_nhwc", "float32_nchw"),
            "color_order": ("BGR", "RGB"),
            "layout": LAYOUTS,
            "precision": ("fp32", "fp16"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    note(
                        f"invalid {name} {getattr(self, name)!r}",
                        f"expected one of {', '.join(allowed)}",
                    )
                )
        if self.integer_stem and (self.precision, self.input_format) != ("fp32", "uint8_nhwc"):
            raise ConfigError(note("integer_stem needs fp32 precision and uint8 input", ""))
        if not all(math.isfinite(x) and x > 0 for x in self.student_stream_scales):
            raise ConfigError(
                note(f"invalid student stream scales {self.student_stream_scales}", "use > 0")
            )
        if self.opset < 17:
            raise ConfigError(note(f"--opset {self.opset} is too old", "use 17 or newer"))


# --------------------------------------------------------------------------- stacking


def _stack_conv(t: nn.Conv2d, s: nn.Conv2d, is_stem: bool) -> nn.Conv2d:
    """One convolution computing both: the stem shares its input, the rest get 2x the groups."""
    in_ch = t.in_channels if is_stem else 2 * t.in_channels
    groups = t.groups if is_stem else 2 * t.groups
    conv = nn.Conv2d(
        in_ch,
        2 * t.out_channels,
        t.kernel_size,
        t.stride,
        t.padding,
        t.dilation,
        groups,
        bias=t.bias is not None,
        padding_mode=t.padding_mode,
    )
    with torch.no_grad():
        conv.weight.copy_(torch.cat([t.weight, s.weight], 0))
        if t.bias is not None:
            conv.bias.copy_(torch.cat([t.bias, s.bias], 0))
    return conv


def _stack_bn(t: nn.BatchNorm2d, s: nn.BatchNorm2d) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(2 * t.num_features, eps=t.eps)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(torch.cat([getattr(t, name), getattr(s, name)], 0))
    return bn.eval()


def stack_networks(teacher: nn.Module, student: nn.Module, stem_name: str) -> nn.Module:
    """A copy of ``teacher`` whose every Conv2d/BatchNorm2d computes teacher and student at once.

    Channels are laid out ``[teacher; student]`` throughout, so element-wise layers, pooling and
    residual additions stay valid unchanged; outputs split in halves along channels.
    """
    stacked = copy.deepcopy(teacher)
    student_modules = dict(student.named_modules())
    for name, module in list(stacked.named_modules()):
        other = student_modules.get(name)
        if isinstance(module, nn.Conv2d):
            replacement = _stack_conv(module, other, is_stem=(name == stem_name))
        elif isinstance(module, nn.BatchNorm2d):
            replacement = _stack_bn(module, other)
        elif isinstance(module, (nn.Linear, nn.BatchNorm1d, nn.MultiheadAttention)):
            raise ExportError(
                f"cannot stack layer {name} ({type(module).__name__}); use --layout separate"
            )
        else:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(stacked.get_submodule(parent_name) if parent_name else stacked, attr, replacement)
    return stacked


class StackedPair(nn.Module):
    """Teacher and student as one network: ``forward(x) -> (teacher feats, student feats)``."""

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        super().__init__()
        self.pair = stack_networks(teacher, student, teacher.stem_name)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        feats = self.pair(x)
        halves = [f.chunk(2, dim=1) for f in feats]
        return [h[0] for h in halves], [h[1] for h in halves]


class SeparatePair(nn.Module):
    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        super().__init__()
        self.teacher, self.student = teacher, student

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.teacher(x), self.student(x)


# --------------------------------------------------------------------------- the fused module


def fold_input_affine(stem: nn.Conv2d, scale: torch.Tensor, flip_channels: bool) -> None:
    """Fold a per-input-channel ``scale`` (RGB order) and a BGR->RGB flip into ``stem``'s weights.

    ``conv(s * x) == conv'(x)`` with ``w'[:, c] = w[:, c] * s[c]``, and reading BGR is reversing
    the input channels of ``w'``. Exact because every stem pads with zeros (ZeroPad2d or the
    convolution's own zero padding), and zero stays zero under scaling. The INT8 graph gains most:
    its quantised stem cannot absorb a Mul and a reversing Slice on the input, which otherwise run
    as two full-frame passes (~10 % of the INT8 graph on a 2-core CPU). FP32 only: in fp16 the
    scaled weights (x 1/(255 std)) would drift towards fp16's subnormal range.
    """
    if stem.in_channels != 3 or stem.groups != 1:
        raise ExportError(f"cannot fold the input normalisation into stem {stem}")
    with torch.no_grad():
        weight = stem.weight * scale.view(1, 3, 1, 1).to(stem.weight.dtype)
        stem.weight.copy_(weight.flip(1) if flip_channels else weight)


# the stem input's offset under integer_stem: x - 128 spans [-128, 127], one byte at scale 1
STEM_ZERO = 128.0


def shift_stem_input(stem: nn.Conv2d, shift: torch.Tensor) -> tuple[int, int]:
    """Make ``stem`` read ``z' = z - shift`` (``shift`` per input channel) instead of ``z``.

    ``conv(z) = conv(z') + sum(w * shift)`` inside the frame, so the sum joins the bias. The zero
    padding of ``z`` is ``-shift`` in ``z'``, which no convolution pads with: the padding moves
    out of the stem (returned as (rows, columns)) into the caller's explicit pad of ``z'``.
    """
    if stem.padding_mode != "zeros" or not isinstance(stem.padding, tuple):
        raise ExportError(f"cannot move the padding of stem {stem} into the graph")
    padding = (int(stem.padding[0]), int(stem.padding[1]))
    with torch.no_grad():
        extra = (stem.weight * shift.view(1, -1, 1, 1).to(stem.weight.dtype)).sum((1, 2, 3))
        if stem.bias is None:
            stem.bias = nn.Parameter(extra)
        else:
            stem.bias.add_(extra)
    stem.padding = (0, 0)
    return padding


def _require_conv_padding(net: nn.Module) -> None:
    """integer_stem moves the stem convolution's own padding; a network that pads its input in a
    module of its own (efficientnet_lite0's ``_stem_pad``) would pad x - 128 with zeros."""
    for name, child in net.named_children():
        if isinstance(child, nn.ConstantPad2d):  # ZeroPad2d is one
            raise ExportError(f"integer_stem: the network pads its input in {name!r}")


class FusedSTPM(nn.Module):
    """The exported computation: image -> (anomaly_map, score, score_normalized[, scale maps])."""

    def __init__(self, model: STPM, calibration: dict, options: GraphOptions) -> None:
        super().__init__()
        cfg = model.config
        self.options, self.size = options, (cfg.image_size, cfg.image_size)
        self.map_settings = am.MapSettings.of(cfg)
        # named buffers -> named initializers, so a re-calibration can overwrite them in the ONNX
        self.register_buffer(THRESHOLD_NAME, torch.tensor(float(calibration["image_threshold"])))
        self.register_buffer(SCALE_NAME, torch.tensor(am.calibration_scale(calibration)))
        teacher, student = copy.deepcopy(model.teacher).eval(), copy.deepcopy(model.student).eval()
        if options.student_stream_scales:  # directions, all the map reads, stay the same
            student.scale_streams(options.student_stream_scales)
        # uint8 -> normalised float as one multiply-add: x * (1 / (255 std)) - mean / std
        mean, std = torch.tensor(cfg.mean), torch.tensor(cfg.std)
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1))
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1))
        self.fold_input = options.precision == "fp32" and options.input_format == "uint8_nhwc"
        if self.fold_input:
            bgr = options.color_order == "BGR"
            for net in (teacher, student):
                fold_input_affine(net.get_submodule(net.stem_name), 1.0 / (255.0 * std), bgr)
            # what is left of the normalisation: x - 255 mean, in the input's channel order
            offset = -255.0 * mean
            self.register_buffer("offset", (offset.flip(0) if bgr else offset).view(1, 3, 1, 1))
            if options.integer_stem:
                _require_conv_padding(teacher)
                # the stems read x - 128 = (x - 255 mean) - shift, shift = 128 - 255 mean
                shift = (offset + STEM_ZERO).flip(0) if bgr else offset + STEM_ZERO
                for net in (teacher, student):
                    stem = net.get_submodule(net.stem_name)
                    self.stem_padding = shift_stem_input(stem, shift)
                # what the stems' zero padding was, in x - 128
                self.register_buffer("stem_pad_value", -shift.view(1, 3, 1, 1))
        # float32 maths on the frame itself, outside /pair/ (INT8 quantises only the backbones)
        self.colour = None if model.colour is None else copy.deepcopy(model.colour).eval()
        self.baseline = None if model.baseline is None else copy.deepcopy(model.baseline).eval()
        pair_cls = StackedPair if options.layout == "stacked" else SeparatePair
        self.pair = pair_cls(teacher, student).eval()
        self.half_backbone = options.precision == "fp16"
        if self.half_backbone:
            self.pair.half()

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        if self.options.input_format == "float32_nchw":
            return image
        # Cast first: TensorRT accepts uint8 only as a network input feeding a Cast directly
        # (onnx-tensorrt docs/operators.md: "UINT8 is only supported as network input or output
        # tensor types"); a Transpose or Slice on the uint8 tensor fails to parse.
        x = image.float().permute(0, 3, 1, 2)
        if self.options.integer_stem:
            # pad x - 128 with stem_pad_value: pad (x - 128 - value) with zeros, add the value back
            rows, cols = self.stem_padding
            z = x - STEM_ZERO - self.stem_pad_value
            return nn.functional.pad(z, (cols, cols, rows, rows)) + self.stem_pad_value
        if self.fold_input:
            return x + self.offset  # scale and colour order live in the stems' weights
        if self.options.color_order == "BGR":
            x = x.flip(1)  # the backbones' weights expect RGB
        return x * self.scale + self.shift

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.preprocess(image)
        if self.half_backbone:
            x = x.half()
        teacher, student = self.pair(x)
        fuse = None
        if self.colour is not None:
            o = self.options
            fuse = self.colour.fuser(
                self.colour.from_graph_input(image, o.input_format, o.color_order)
            )
        baseline = None if self.baseline is None else self.baseline.values
        amap, score, scale_maps = am.score_map(
            teacher, student, self.size, self.map_settings, fuse, baseline
        )
        normalized = am.normalize_score(
            score, getattr(self, THRESHOLD_NAME), getattr(self, SCALE_NAME)
        )
        outputs = (amap, score, normalized)
        return outputs + tuple(scale_maps) if self.options.per_scale_maps else outputs


# --------------------------------------------------------------------------- ONNX export


def example_input(options: GraphOptions, image_size: int, batch: int = 2) -> torch.Tensor:
    if options.input_format == "float32_nchw":
        return torch.zeros(batch, 3, image_size, image_size)
    return torch.zeros(batch, image_size, image_size, 3, dtype=torch.uint8)


def output_names(options: GraphOptions) -> list[str]:
    return OUTPUT_NAMES + (SCALE_MAP_NAMES if options.per_scale_maps else [])


def trace_to_onnx(module: FusedSTPM, image_size: int) -> onnx.ModelProto:
    """Trace with the TorchScript exporter (eval mode: BatchNorm folds into the convolutions)."""
    options = module.options
    names = output_names(options)
    dynamic = {name: {0: "N"} for name in ["image", *names]}
    buffer = io.BytesIO()
    # The tracer warns that the map's fixed spatial size becomes a constant (it is fixed by design)
    # and that the BGR->RGB flip (a step -1 Slice) is not constant-folded (it runs on data): noise.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            module,
            (example_input(options, image_size),),
            buffer,
            input_names=["image"],
            output_names=names,
            dynamic_axes=dynamic,
            opset_version=options.opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and dead-code removal by onnxslim (a maintained simplifier)."""
    import onnxslim

    return onnxslim.slim(model)


def build_metadata(
    model: STPM,
    calibration: dict,
    options: GraphOptions,
    checkpoint_sha256: str,
    precision: str | None = None,
    int8_target: str | None = None,
) -> dict[str, str]:
    cfg = model.config
    values = {
        "format": "stpm-edge-onnx/1",
        "version": __version__,
        "backbone": cfg.backbone,
        "layers": [stage.module for stage in get_backbone_spec(cfg.backbone).stages],
        "input_size": [cfg.image_size, cfg.image_size],
        "input_format": options.input_format,
        "color_order": options.color_order,
        "mean": cfg.mean,
        "std": cfg.std,
        "calibration": calibration,
        "image_threshold": calibration["image_threshold"],
        "pixel_threshold": calibration["pixel_threshold"],
        "precision": precision or options.precision,
        "layout": options.layout,
        "blur_sigma": cfg.blur_sigma,
        "score_reduction": cfg.score_reduction,
        "topk_fraction": cfg.topk_fraction,
        "map_resolution": cfg.map_resolution,
        "teacher_weights": cfg.teacher_weights,
        "checkpoint_sha256": checkpoint_sha256,
        "outputs": output_names(options),
        "colour_map": colour_map.describe(model.colour),
        "score_baseline": score_baseline.describe(model.baseline),
    }
    if options.integer_stem:  # the stems read x - 128 (export.int8 quantises them exactly)
        values["integer_stem"] = True
    if options.student_stream_scales:
        values["student_stream_scales"] = list(options.student_stream_scales)
    if int8_target is not None:  # the runtime an INT8 graph's quantisation recipe is for
        values["int8_target"] = int8_target
    return {f"stpm.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "stpm-edge", __version__


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    from stpm_edge.runtime.metadata import props

    return props(model)


def check(model: onnx.ModelProto, where: str) -> None:
    """``onnx.checker`` with full shape inference; an :class:`ExportError` naming the step."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises ValidationError or InferenceError
        raise ExportError(f"{where}: the graph failed onnx.checker: {exc}") from exc


def fix_output_shapes(graph: onnx.ModelProto, image_size: int, reductions: list[int]) -> None:
    """Declare the maps' static shapes (N, 1, H, W): the tracer leaves them symbolic after Resize."""
    sizes = {"anomaly_map": image_size} | {
        n: image_size // r for n, r in zip(SCALE_MAP_NAMES, reductions, strict=True)
    }
    for output in graph.graph.output:
        if output.name in sizes:
            dims = output.type.tensor_type.shape.dim
            for dim, value in zip(
                dims[1:], (1, sizes[output.name], sizes[output.name]), strict=True
            ):
                dim.Clear()
                dim.dim_value = value


def apply_calibration(graph: onnx.ModelProto, calibration: dict) -> None:
    """Overwrite the graph's calibration constants and metadata (after a re-calibration)."""
    from onnx import numpy_helper

    values = {
        THRESHOLD_NAME: float(calibration["image_threshold"]),
        SCALE_NAME: am.calibration_scale(calibration),
    }
    found = set()
    for init in graph.graph.initializer:
        if init.name in values:
            dtype = numpy_helper.to_array(init).dtype
            init.CopyFrom(
                numpy_helper.from_array(
                    __import__("numpy").array(values[init.name], dtype=dtype), init.name
                )
            )
            found.add(init.name)
    if found != set(values):
        raise ExportError(
            f"re-calibration: initializers {sorted(set(values) - found)} not found in the graph"
        )
    metadata = read_metadata(graph)
    metadata.update(
        {
            "stpm.calibration": json.dumps(calibration),
            "stpm.image_threshold": json.dumps(calibration["image_threshold"]),
            "stpm.pixel_threshold": json.dumps(calibration["pixel_threshold"]),
        }
    )
    set_metadata(graph, metadata)


def build_graph(
    model: STPM, calibration: dict, options: GraphOptions, checkpoint_sha256: str
) -> onnx.ModelProto:
    """The checked, simplified fused graph of ``model`` with its metadata."""
    if not calibration:
        raise ExportError(
            note("the checkpoint has no calibration", "use RUN_DIR/best.ckpt written by stpm-train")
        )
    fused = FusedSTPM(model.eval(), calibration, options).eval()
    graph = simplify(trace_to_onnx(fused, model.config.image_size))
    from stpm_edge.backbones import get_backbone_spec

    fix_output_shapes(
        graph, model.config.image_size, get_backbone_spec(model.config.backbone).reductions
    )
    set_metadata(graph, build_metadata(model, calibration, options, checkpoint_sha256))
    check(graph, f"{options.precision} export")
    return graph


def fingerprint(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
