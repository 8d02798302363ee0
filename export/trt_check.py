"""Would TensorRT's ONNX parser accept this graph? The documented limits, checked without TensorRT.

No TensorRT runs where this project is built and tested, so TensorRT compatibility is a property
the project checks itself: every rule below is a limit NVIDIA documents for its ONNX parser, and
each :class:`Violation` cites where. Sources:

- ``operators.md``: onnx/onnx-tensorrt ``docs/operators.md`` on the 10.x branches (the table of
  supported ops, their tensor types and restrictions; 10.0 states opsets 9-20, 10.15 opsets 9-24,
  and the 10.x text "UINT8 is only supported as network input or output tensor types").
- ``ModelImporter.cpp`` / ``onnxOpImporters.cpp``: the parser source of those branches (network
  I/O types; the Q/DQ, TopK and Resize importers).
- TensorRT's operator documentation for ITopKLayer (``k <= 3840``) and NVIDIA/TensorRT#3985
  (a uint8 input must feed a Cast).

Versions: ``"10.3"`` is JetPack 6.1/6.2 (the oldest TensorRT this project targets), ``"10.x"`` the
current 10.x table, ``"11"`` TensorRT 11 (same parser table as late 10.x). Any ``"10.N"`` is
accepted; below 10.15 the opset limit of 10.0 (20) is applied — the conservative choice.

The check covers every op and tensor type ``stpm-export`` can write (fp32/fp16/int8 for TensorRT,
separate/stacked, uint8/float input). An op missing from :data:`OPS` is reported as unverified
rather than passed. This module imports only onnx and numpy: ``stpm-doctor`` runs it on devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from stpm_edge.errors import ConfigError, ExportError, note

OPS_MD = "onnx-tensorrt docs/operators.md (10.x)"
IMPORTER = "onnx-tensorrt ModelImporter.cpp"
OP_IMPORTERS = "onnx-tensorrt onnxOpImporters.cpp"
UINT8_SOURCE = (
    f"{OPS_MD}: 'UINT8 is only supported as network input or output tensor types'; "
    "NVIDIA/TensorRT#3985"
)
TOPK_SOURCE = f"{OPS_MD} TopK: 'K input must be less than 3840'; TensorRT ITopKLayer docs"

TOPK_MAX_K = 3839
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDINATES = {
    "half_pixel",
    "pytorch_half_pixel",
    "tf_half_pixel_for_nn",
    "asymmetric",
    "align_corners",
}
RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}

T = TensorProto
FLOATS = frozenset({T.FLOAT, T.FLOAT16, T.BFLOAT16})
INTS = frozenset({T.INT32, T.INT64})
NUMERIC = FLOATS | INTS
ANY = NUMERIC | {T.BOOL}
DQ_INPUTS = frozenset({T.INT8, T.FLOAT8E4M3FN})  # + INT4/FP4 in later 10.x, never written here
NETWORK_IO = ANY | {T.UINT8}

# Supported ops and the types of their data input (input 0), from the 10.x operators.md table.
# Ops whose integer inputs are shapes/indices (Expand, Slice, ...) list only the data tensor types.
OPS: dict[str, frozenset[int]] = {
    "Add": NUMERIC,
    # "AveragePool | Y | FP32, FP16, BF16 | 2D or 3D Pooling only. `dilations` must be empty or
    # all ones" (the colour map's cell means: 2-D, no dilations)
    "AveragePool": FLOATS,
    "Cast": ANY | {T.UINT8},
    "Clip": FLOATS,
    "Concat": ANY,
    "Constant": ANY,
    "ConstantOfShape": ANY,
    "Conv": FLOATS,
    "DequantizeLinear": DQ_INPUTS,
    "Div": NUMERIC,
    "Equal": NUMERIC,
    "Expand": ANY,
    "Flatten": ANY,
    "Gather": ANY,
    "Greater": NUMERIC,
    "Identity": ANY,
    "Less": NUMERIC,
    "MatMul": FLOATS,  # "MatMul | Y | FP32, FP16, BF16" (the bilinear upsampling's matrices)
    "Max": NUMERIC,
    "MaxPool": FLOATS,
    "Min": NUMERIC,
    "Mul": NUMERIC,
    "Pad": NUMERIC,
    "QuantizeLinear": FLOATS,
    "ReduceMax": NUMERIC,
    "ReduceMean": NUMERIC,
    # "ReduceMin | Y | FP32, FP16, BF16, INT32, INT64 | `axes` must be an initializer" (the local
    # colour map's nearest candidate)
    "ReduceMin": NUMERIC,
    "ReduceSum": NUMERIC,
    "Relu": NUMERIC,
    "Reshape": ANY,
    "Resize": FLOATS,
    "ScatterElements": NUMERIC,
    "Shape": ANY,
    "Slice": ANY,
    "Split": ANY,
    "Sqrt": FLOATS,
    "Squeeze": ANY,
    "Sub": NUMERIC,
    "TopK": NUMERIC,
    "Transpose": ANY,
    "Unsqueeze": ANY,
    "Where": ANY,
}
# Inputs that must be build-time constants (initializers, or folded from constants), by op:
# ``axes`` of Reduce*/Slice/Squeeze/Unsqueeze/Pad ("`axes` must be an initializer" in operators.md;
# 10.1-era parsers require it for Pad and Slice too) and TopK's K.
CONSTANT_INPUTS: dict[str, dict[int, str]] = {
    "ReduceMax": {1: "axes"},
    "ReduceMean": {1: "axes"},
    "ReduceMin": {1: "axes"},
    "ReduceSum": {1: "axes"},
    "Slice": {3: "axes"},
    "Squeeze": {1: "axes"},
    "Unsqueeze": {1: "axes"},
    "Pad": {3: "axes"},
    "TopK": {1: "K"},
}
OPSET_RANGE = {"10.3": (9, 20), "10.x": (9, 24), "11": (9, 24)}


@dataclass(frozen=True)
class Violation:
    """One documented TensorRT parser limit that a node breaks."""

    node: str  # node name (or the tensor name for graph-level rules)
    op_type: str
    rule: str  # short rule id, e.g. "uint8-input"
    message: str
    source: str  # where the limit is documented


def format_violations(violations: list[Violation]) -> str:
    """One line per violation: node, op, rule, what is wrong, and the source."""
    return "\n".join(
        f"  {v.node or '<graph>'} ({v.op_type}): [{v.rule}] {v.message}  [source: {v.source}]"
        for v in violations
    )


def normalize_version(trt_version: str) -> str:
    """'10.3' / '10.x' / '11' keys of the rule table from any TensorRT version string."""
    text = str(trt_version).strip().lower()
    major, _, minor = text.partition(".")
    if major == "11" or (major.isdigit() and int(major) > 11):
        return "11"
    if major == "10":
        if minor in ("", "x") or (minor.split(".")[0].isdigit() and int(minor.split(".")[0]) >= 15):
            return "10.x"
        if minor.split(".")[0].isdigit():
            return "10.3"  # conservative: the 10.0-10.14 documents' limits
    raise ConfigError(
        note(
            f"TensorRT version {trt_version!r} is not covered by the check",
            "use 10.3 (JetPack 6), 10.x or 11; TensorRT before 10 is not supported",
        )
    )


# --------------------------------------------------------------------------- the graph's facts


class GraphFacts:
    """Types, shapes, producers, consumers and foldable constants of a model's main graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # an un-inferable graph still gets the structural rules
            inferred = model
        graph = inferred.graph
        self.graph = graph
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list[int | None]] = {}
        for value in [*graph.input, *graph.value_info, *graph.output]:
            tensor_type = value.type.tensor_type
            if tensor_type.elem_type:
                self.types[value.name] = tensor_type.elem_type
            if tensor_type.HasField("shape"):
                self.shapes[value.name] = [
                    d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
                ]
        self.constants: dict[str, np.ndarray] = {
            i.name: numpy_helper.to_array(i) for i in graph.initializer
        }
        for init in graph.initializer:
            self.types[init.name] = init.data_type
            self.shapes[init.name] = list(init.dims)
        self.producer = {out: node for node in graph.node for out in node.output if out}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.inputs = {i.name for i in graph.input} - set(self.constants)
        self.outputs = {o.name for o in graph.output}

    def value(self, name: str, depth: int = 0) -> np.ndarray | None:
        """The tensor's value if it is known at build time (initializer or folded), else None."""
        if name in self.constants:
            return self.constants[name]
        node = self.producer.get(name)
        if node is None or depth > 32:
            return None
        folded = _fold(node, self, depth)
        if folded is not None:
            self.constants[name] = folded
        return folded


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _fold(node: onnx.NodeProto, facts: GraphFacts, depth: int) -> np.ndarray | None:
    """Evaluate the few ops that compute a K or an axes list from constants (numpy)."""
    op = node.op_type
    if op == "Constant":
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
            if attr.name in ("value_int", "value_ints", "value_float", "value_floats"):
                return np.array(onnx.helper.get_attribute_value(attr))
        return None
    if op == "Shape":
        shape = facts.shapes.get(node.input[0])
        return None if shape is None or None in shape else np.array(shape, dtype=np.int64)
    args = [facts.value(name, depth + 1) if name else None for name in node.input]
    unary = _UNARY.get(op)
    if unary is not None:
        return None if not args or args[0] is None else unary(node, args[0])
    if any(a is None for a in args):
        return None
    binary = _BINARY.get(op)
    return binary(*args) if binary is not None else _fold_shape_op(node, args)


_UNARY = {
    "Identity": lambda node, x: x,
    "Cast": lambda node, x: x.astype(onnx.helper.tensor_dtype_to_np_dtype(_attr(node, "to"))),
    "Floor": lambda node, x: np.floor(x),
    "Ceil": lambda node, x: np.ceil(x),
}
_BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": lambda a, b: a // b if np.issubdtype(a.dtype, np.integer) else a / b,
    "Min": np.minimum,
    "Max": np.maximum,
}


def _fold_shape_op(node: onnx.NodeProto, args: list[np.ndarray]) -> np.ndarray | None:
    op = node.op_type
    if op == "Concat":
        return np.concatenate([np.atleast_1d(a) for a in args], axis=_attr(node, "axis", 0))
    if op == "Reshape":
        return args[0].reshape(args[1])
    if op == "Unsqueeze":
        return np.expand_dims(args[0], tuple(int(a) for a in args[1]))
    if op == "Squeeze":
        return np.squeeze(args[0], tuple(int(a) for a in args[1])) if len(args) > 1 else args[0]
    if op == "Gather":
        return np.take(args[0], args[1], axis=_attr(node, "axis", 0))
    return None


# --------------------------------------------------------------------------- the rules


def _name(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else "?")


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type)


def _violation(node: onnx.NodeProto, rule: str, message: str, source: str = OPS_MD) -> Violation:
    """A :class:`Violation` of ``node``, named and typed by the node itself."""
    return Violation(_name(node), node.op_type, rule, message, source)


def _check_graph_io(facts: GraphFacts) -> list[Violation]:
    """uint8 only as a network input feeding Casts, or a network output; I/O types supported."""
    found = []
    for value in [*facts.graph.input, *facts.graph.output]:
        elem = facts.types.get(value.name)
        if value.name in facts.constants or elem is None or elem in NETWORK_IO:
            continue
        found.append(
            Violation(
                value.name,
                "<graph I/O>",
                "io-type",
                f"network input/output type {_type_name(elem)} is not supported",
                IMPORTER,
            )
        )
    for name in facts.inputs:
        if facts.types.get(name) != T.UINT8:
            continue
        for node in facts.consumers.get(name, []):
            if node.op_type != "Cast":
                found.append(
                    _violation(
                        node,
                        "uint8-input",
                        f"uint8 network input {name!r} feeds a {node.op_type}; a uint8 input "
                        "may only feed a Cast (Cast to float first)",
                        UINT8_SOURCE,
                    )
                )
    return found


def _check_uint8_intermediates(facts: GraphFacts) -> list[Violation]:
    found = []
    for node in facts.graph.node:
        for out in node.output:
            if out and facts.types.get(out) == T.UINT8 and out not in facts.outputs:
                found.append(
                    _violation(
                        node,
                        "uint8-intermediate",
                        f"output {out!r} is a uint8 tensor inside the network "
                        "(uint8 is allowed only as a network input or output)",
                        UINT8_SOURCE,
                    )
                )
    return found


def _check_op(node: onnx.NodeProto, facts: GraphFacts) -> list[Violation]:
    """Op supported, data-input type supported, build-time-constant inputs."""
    if node.domain not in ("", "ai.onnx"):
        return [
            _violation(node, "op-domain", f"op of domain {node.domain!r} needs a TensorRT plugin")
        ]
    allowed = OPS.get(node.op_type)
    if allowed is None:
        return [
            _violation(
                node,
                "op-unverified",
                f"op {node.op_type} is not in this check's table of ops verified against "
                "the TensorRT operator matrix",
            )
        ]
    found = []
    elem = facts.types.get(node.input[0]) if node.input and node.input[0] else None
    if elem is not None and elem not in allowed and node.op_type != "DequantizeLinear":
        found.append(
            _violation(
                node,
                "input-type",
                f"input {node.input[0]!r} is {_type_name(elem)}; TensorRT's {node.op_type} takes "
                + ", ".join(sorted(_type_name(t) for t in allowed)),
            )
        )
    for index, what in CONSTANT_INPUTS.get(node.op_type, {}).items():
        if len(node.input) > index and node.input[index] and facts.value(node.input[index]) is None:
            found.append(
                _violation(
                    node,
                    "constant-input",
                    f"`{what}` ({node.input[index]!r}) must be a build-time constant "
                    "(an initializer)",
                )
            )
    if node.op_type == "Cast":
        to = _attr(node, "to")
        if to not in OPS["Cast"]:
            found.append(
                _violation(
                    node,
                    "cast-type",
                    f"Cast to {_type_name(to)} is not supported (INT8 only through Q/DQ)",
                )
            )
    return found


def _check_qdq(node: onnx.NodeProto, facts: GraphFacts) -> list[Violation]:
    """Zero point 0 of a signed type; positive scales; per-channel length = the axis' size."""
    found = []

    def add(rule: str, message: str, source: str = OPS_MD) -> None:
        found.append(_violation(node, rule, message, source))

    elem = facts.types.get(node.input[0])
    if node.op_type == "DequantizeLinear" and elem is not None and elem not in DQ_INPUTS:
        hint = " (a quantised int32 bias: keep biases float)" if elem == T.INT32 else ""
        add(
            "dq-input-type",
            f"DequantizeLinear of {_type_name(elem)}{hint}; TensorRT dequantises INT8/FP8 only",
        )

    if len(node.input) > 2 and node.input[2]:
        zero = facts.value(node.input[2])
        zero_type = facts.types.get(node.input[2])
        if zero is None:
            add("qdq-zero-point", "the zero point must be a build-time constant")
        elif np.any(zero != 0):
            what = "y_zero_point" if node.op_type == "QuantizeLinear" else "x_zero_point"
            add("qdq-zero-point", f"`{what}` must be 0 (symmetric quantisation); got non-zero")
        if zero_type == T.UINT8:
            add(
                "qdq-uint8",
                "uint8 quantisation: TensorRT re-types it as INT8 (values change meaning); "
                "quantise to signed INT8",
                f"{OP_IMPORTERS} (QuantizeLinear/DequantizeLinear importers); {UINT8_SOURCE}",
            )
    scale = facts.value(node.input[1]) if len(node.input) > 1 else None
    if scale is not None:
        if np.any(scale <= 0):
            add("qdq-scale", "scales must be positive", OP_IMPORTERS)
        if scale.size > 1:
            shape = facts.shapes.get(node.input[0])
            axis = _attr(node, "axis", 1)
            dim = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
            if dim is not None and dim != scale.size:
                add(
                    "qdq-per-channel",
                    f"per-channel scale has {scale.size} values but axis {axis} has size {dim}",
                    OP_IMPORTERS,
                )
    return found


def _check_topk(node: onnx.NodeProto, facts: GraphFacts) -> list[Violation]:
    found = []
    k = facts.value(node.input[1]) if len(node.input) > 1 else None
    if k is not None and int(np.max(k)) > TOPK_MAX_K:
        found.append(
            _violation(
                node,
                "topk-k",
                f"K = {int(np.max(k))}; TensorRT's TopK needs K < {TOPK_MAX_K + 1}",
                TOPK_SOURCE,
            )
        )
    if _attr(node, "sorted", 1) != 1:
        found.append(_violation(node, "topk-sorted", "`sorted` must be 1"))
    return found


def _check_resize(node: onnx.NodeProto, facts: GraphFacts) -> list[Violation]:
    checks = [
        ("mode", "nearest", RESIZE_MODES),
        ("coordinate_transformation_mode", "half_pixel", RESIZE_COORDINATES),
        ("nearest_mode", "round_prefer_floor", RESIZE_NEAREST),
        ("keep_aspect_ratio_policy", "stretch", {"stretch"}),
    ]
    found = [
        _violation(
            node,
            f"resize-{attr.replace('_', '-')}",
            f"{attr} {_attr(node, attr, default)!r} is not supported "
            f"(supported: {', '.join(sorted(allowed))})",
            f"{OPS_MD} Resize",
        )
        for attr, default, allowed in checks
        if _attr(node, attr, default) not in allowed
    ]
    if _attr(node, "antialias", 0):
        found.append(
            _violation(
                node, "resize-antialias", "antialiasing is not supported", f"{OPS_MD} Resize"
            )
        )
    return found


def _check_average_pool(node: onnx.NodeProto, facts: GraphFacts) -> list[Violation]:
    """operators.md 10.x: "2D or 3D Pooling only. `dilations` must be empty or all ones"."""
    found = []
    kernel = _attr(node, "kernel_shape", [])
    if len(kernel) not in (2, 3):
        found.append(
            _violation(node, "pool-rank", f"{len(kernel)}-D pooling; TensorRT pools 2-D or 3-D")
        )
    dilations = _attr(node, "dilations", [])
    if any(int(d) != 1 for d in dilations):
        found.append(
            _violation(node, "pool-dilations", f"dilations {list(dilations)} must be all ones")
        )
    return found


NODE_RULES = {
    "AveragePool": _check_average_pool,
    "QuantizeLinear": _check_qdq,
    "DequantizeLinear": _check_qdq,
    "TopK": _check_topk,
    "Resize": _check_resize,
}


def _check_opset(model: onnx.ModelProto, version: str) -> list[Violation]:
    low, high = OPSET_RANGE[version]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or low <= opset <= high:
        return []
    return [
        Violation(
            "",
            "<model>",
            "opset",
            f"opset {opset} is outside TensorRT {version}'s range {low}-{high}",
            OPS_MD,
        )
    ]


def load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ConfigError(note(f"model {path} not found", "give an existing .onnx file"))
    return onnx.load(path)


def check_model(model: onnx.ModelProto | str | Path, trt_version: str = "10.3") -> list[Violation]:
    """Every documented TensorRT ONNX-parser limit that ``model`` breaks ([] = parses)."""
    version = normalize_version(trt_version)
    proto = load(model)
    facts = GraphFacts(proto)
    found = _check_opset(proto, version) + _check_graph_io(facts)
    found += _check_uint8_intermediates(facts)
    for node in facts.graph.node:
        found += _check_op(node, facts)
        rule = NODE_RULES.get(node.op_type)
        if rule is not None:
            found += rule(node, facts)
    return found


def require_trt_compatible(
    model: onnx.ModelProto | str | Path, trt_version: str = "10.3", what: str = "graph"
) -> None:
    """Raise :class:`ExportError` listing every violation, if any."""
    violations = check_model(model, trt_version)
    if violations:
        raise ExportError(
            note(
                f"{what}: TensorRT {trt_version}'s ONNX parser would reject it "
                f"({len(violations)} violation(s)):\n{format_violations(violations)}",
                "export for TensorRT with --target tensorrt (INT8), and report a bug if an "
                "fp32/fp16 graph fails",
            )
        )
