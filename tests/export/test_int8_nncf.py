"""INT8 for OpenVINO with NNCF on a tiny graph named like the exporter's (backbone = /pair/)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stpm_edge.errors import ExportError
from stpm_edge.export import int8, int8_graph, int8_nncf, int8_weights

SIZE = 16


def tiny_fused_graph(
    tail_reads_relu: bool = False,
    convs: tuple[str, str] = ("/pair/Conv", "/pair/Conv_1"),
    groups: int = 1,
) -> onnx.ModelProto:
    """uint8 NHWC -> /pair/ conv-relu-conv (the 'backbone') -> float tail (square, mean, max).

    ``tail_reads_relu``: the tail also squares the ReLU output, which the second conv reads
    quantised (a feature used by both the next layer and the tail, as every STPM scale but the
    last). ``convs``: the two convolutions' node names (resnet18's stem is ``conv1``). ``groups``:
    of the second convolution (2 in the stacked layout: teacher and student)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2, "w1"),
        numpy_helper.from_array(
            rng.standard_normal((8, 8 // groups, 3, 3)).astype(np.float32) * 0.2, "w2"
        ),
        numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        numpy_helper.from_array(np.array(1 / 255, np.float32), "inv255"),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], name="/Cast", to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["xf"], ["xt"], name="/Transpose", perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["xt", "inv255"], ["x"], name="/Mul"),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name=convs[0], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="/pair/Relu"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name=convs[1], pads=[1] * 4, group=groups),
        helper.make_node("Mul", ["c2", "c2"], ["sq"], name="/Mul_1"),
        helper.make_node(
            "ReduceMean",
            ["sq"],
            ["m2" if tail_reads_relu else "anomaly_map"],
            name="/ReduceMean",
            axes=[1],
            keepdims=1,
        ),  # fmt: skip
        helper.make_node(
            "ReduceMax", ["anomaly_map"], ["score"], name="/ReduceMax", axes=[1, 2, 3], keepdims=0
        ),
    ]
    if tail_reads_relu:
        nodes[-1:-1] = [
            helper.make_node("Mul", ["r1", "r1"], ["sq1"], name="/Mul_2"),
            helper.make_node("ReduceMean", ["sq1"], ["m1"], name="/ReduceMean_1", axes=[1]),
            helper.make_node("Add", ["m1", "m2"], ["anomaly_map"], name="/Add"),
        ]
    graph = helper.make_graph(
        nodes,
        "tiny_fused",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", SIZE, SIZE, 3])],
        [
            helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, SIZE, SIZE]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    props = {
        "stpm.precision": "fp32",
        "stpm.format": "stpm-edge-onnx/1",
        "stpm.backbone": "resnet18",
    }
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _run_ort(model: onnx.ModelProto, frames: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"image": frames}), strict=True))


def test_quantize_nncf_backbone_only() -> None:
    pytest.importorskip("nncf", reason="nncf not installed (pip install '.[quantization]')")
    fp32 = tiny_fused_graph()
    q = int8_nncf.quantize_nncf(fp32, _frames(8), subset_size=8)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and "DequantizeLinear" in ops
    # every activation quantiser feeds the backbone; the float tail is never quantised
    consumers = {i: n for n in q.graph.node for i in n.input}
    for node in q.graph.node:
        if node.op_type == "QuantizeLinear":
            dq = consumers[node.output[0]]
            assert dq.op_type == "DequantizeLinear"
            assert consumers[dq.output[0]].name.startswith("/pair/"), dq.output[0]
    assert {p.key: p.value for p in q.metadata_props}["stpm.format"] == "stpm-edge-onnx/1"
    onnx.checker.check_model(q)
    frames = _frames(4, seed=1)
    want, got = _run_ort(fp32, frames), _run_ort(q, frames)
    assert np.isfinite(got["anomaly_map"]).all()
    rel = np.abs(got["score"] - want["score"]) / np.abs(want["score"])
    assert rel.max() < 0.2  # 8-bit backbone, float tail: close, not equal


def test_stem_stays_float_and_weights_fit_cpus_without_vnni() -> None:
    """The openvino target keeps the backbone's float head (here resnet18's stem ``conv1``) like
    the ONNX Runtime targets, and NNCF's overflow fix keeps dense weights in 7 bits, so OpenVINO's
    kernels do not saturate on CPUs without VNNI."""
    pytest.importorskip("nncf", reason="nncf not installed (pip install '.[quantization]')")
    names = ("/pair/teacher/conv1/Conv", "/pair/teacher/layer1/Conv")
    q = int8_nncf.quantize_nncf(tiny_fused_graph(convs=names), _frames(8), subset_size=8)
    producers = {o: n for n in q.graph.node for o in n.output}
    convs = {n.name: n for n in q.graph.node if n.op_type == "Conv"}
    assert producers.get(convs[names[0]].input[1]) is None  # the stem reads float32 weights
    assert producers[convs[names[1]].input[1]].op_type == "DequantizeLinear"
    # no stem: both convolutions 8-bit activations, both with 7-bit weights (not only the first)
    names = ("/pair/teacher/layer1/Conv", "/pair/teacher/layer2/Conv")
    q = int8_nncf.quantize_nncf(tiny_fused_graph(convs=names), _frames(8), subset_size=8)
    producers = {o: n for n in q.graph.node for o in n.output}
    weights = [producers[n.input[1]] for n in q.graph.node if n.op_type == "Conv"]
    assert [w.op_type for w in weights] == ["DequantizeLinear"] * 2
    assert int8_weights.largest_dense_weight(q) <= int8_weights.PAIR_SAFE_WEIGHT


def test_grouped_convolutions_get_7_bit_weights_too() -> None:
    """NNCF's overflow fix skips grouped convolutions (every convolution of the stacked layout);
    ``cap_dense_weights`` re-quantises them from the float weights, so no dense weight of the
    openvino graph saturates on a CPU without VNNI."""
    pytest.importorskip("nncf", reason="nncf not installed (pip install '.[quantization]')")
    names = ("/pair/pair/layer1/Conv", "/pair/pair/layer2/Conv")
    fp32 = tiny_fused_graph(convs=names, groups=2)
    q = int8_nncf.quantize_nncf(fp32, _frames(8), subset_size=8)
    assert int8_weights.largest_dense_weight(q) <= int8_weights.PAIR_SAFE_WEIGHT
    want, got = _run_ort(fp32, _frames(4, seed=1)), _run_ort(q, _frames(4, seed=1))
    rel = np.abs(got["score"] - want["score"]) / np.abs(want["score"])
    assert rel.max() < 0.2  # the re-quantised weights still compute the same layer


def test_tail_reads_the_dequantised_features() -> None:
    """NNCF leaves its ignored tail reading the float ReLU output next to the quantiser; after
    quantize_nncf the tail reads the DequantizeLinear output, like ONNX Runtime's QDQ graphs."""
    pytest.importorskip("nncf", reason="nncf not installed (pip install '.[quantization]')")
    q = int8_nncf.quantize_nncf(tiny_fused_graph(tail_reads_relu=True), _frames(8), subset_size=8)
    nodes = {n.name: n for n in q.graph.node}
    producers = {o: n for n in q.graph.node for o in n.output}
    square = nodes["/Mul_2"]
    assert [producers[i].op_type for i in square.input] == ["DequantizeLinear"] * 2
    dq = producers[square.input[0]]
    quantiser = producers[dq.input[0]]
    assert quantiser.op_type == "QuantizeLinear" and quantiser.input[0] == "r1"
    # the quantised conv reads the same dequantised tensor; nothing outside /pair/ reads r1
    assert any(n.name.startswith("/pair/") and dq.output[0] in n.input for n in q.graph.node)
    assert not [n.name for n in q.graph.node if "r1" in n.input and n.op_type != "QuantizeLinear"]
    onnx.checker.check_model(q)
    assert np.isfinite(_run_ort(q, _frames(2, seed=3))["score"]).all()


def test_tail_reads_quantized_keeps_the_stacked_split_and_backbone() -> None:
    """The stacked pair's own /pair/Slice counts as tail; a backbone node is never rerouted."""
    x = helper.make_node("Relu", ["a"], ["x"], name="/pair/pair/relu")
    q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q")
    dq = helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq")
    conv_float = helper.make_node("Relu", ["x"], ["y"], name="/pair/pair/layer2/relu")
    split = helper.make_node("Slice", ["x", "b", "e"], ["t"], name="/pair/Slice")
    tail = helper.make_node("Mul", ["x", "x"], ["m"], name="/Mul")
    graph = helper.make_graph([x, q, dq, conv_float, split, tail], "g", [], [])
    model = helper.make_model(graph)
    assert int8_graph.tail_reads_quantized(model) == 3
    inputs = {n.name: list(n.input) for n in model.graph.node}  # make_graph copied the nodes
    assert inputs["/pair/Slice"] == ["xd", "b", "e"] and inputs["/Mul"] == ["xd", "xd"]
    assert inputs["/pair/pair/layer2/relu"] == ["x"] and inputs["q"][0] == "x"


def test_quantize_nncf_errors() -> None:
    pytest.importorskip("nncf", reason="nncf not installed (pip install '.[quantization]')")
    with pytest.raises(ExportError, match="no images"):
        int8_nncf.quantize_nncf(tiny_fused_graph(), _frames(0))
    with pytest.raises(ExportError, match="unknown NNCF preset"):
        int8_nncf.quantize_nncf(tiny_fused_graph(), _frames(2), preset="fast")
    graph = tiny_fused_graph()
    for node in graph.graph.node:
        node.name = node.name.replace("/pair/", "/other/")
    with pytest.raises(ExportError, match="no node named /pair/"):
        int8_nncf.quantize_nncf(graph, _frames(2))


def test_missing_nncf_says_what_to_install(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(ExportError, match=r"stpm-edge\[quantization\]"):
        int8_nncf.quantize_nncf(tiny_fused_graph(), _frames(2))


def test_int8_target_openvino_dispatches_to_nncf(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(
        int8_nncf, "quantize_nncf", lambda graph, frames: calls.append(len(frames)) or graph
    )
    graph = tiny_fused_graph()
    assert int8.quantize_int8(graph, _frames(3), target="openvino") is graph
    assert calls == [3]
