"""INT8 export: QDQ only on the backbones, a float32 tail, finite and still ranking defects; the
QDQ properties each target promises (cpu: U8S8 for ONNX Runtime; tensorrt: symmetric INT8)."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from stpm_edge.export.cli import main as export_main

TAIL_OPS = ("ReduceSum", "Sqrt", "Resize", "TopK", "ReduceMax", "ReduceMean")


@pytest.fixture(scope="module")
def trt_int8_path(best_ckpt: Path, demo_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``stpm-export --int8 --target tensorrt``: the graph for TensorRT's explicit quantisation."""
    path = tmp_path_factory.mktemp("int8_trt") / "model_int8_trt.onnx"
    argv = [str(best_ckpt), "-o", str(path), "--int8", "--calib", str(demo_data.train_good)]
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = export_main([*argv, "--target", "tensorrt", "-q"])
    assert rc == 0, err.getvalue()
    return path


def qdq_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def zero_points(model: onnx.ModelProto) -> list[np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [inits[n.input[2]] for n in qdq_nodes(model) if len(n.input) > 2]


def dequantized_types(model: onnx.ModelProto) -> set[int]:
    """Element types of the constant tensors DequantizeLinear reads (weights, biases)."""
    inits = {i.name: i for i in model.graph.initializer}
    return {
        inits[n.input[0]].data_type
        for n in qdq_nodes(model)
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
    }


def clip_count(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "Clip" for n in model.graph.node)


def test_tensorrt_target_is_symmetric_signed_int8_with_float_biases_and_clips(
    trt_int8_path: Path, exported_onnx: Path
) -> None:
    from stpm_edge.export.trt_check import check_model, format_violations

    model = onnx.load(trt_int8_path)
    zps = zero_points(model)
    assert len(zps) == len(qdq_nodes(model)) > 0
    assert all(z.dtype == np.int8 and not z.any() for z in zps)  # signed, zero point 0
    assert dequantized_types(model) == {onnx.TensorProto.INT8}  # no int32 bias DQ
    convs = [n for n in model.graph.node if n.op_type == "Conv" and in_backbone(n)]
    assert convs and all(len(n.input) < 3 or "DequantizeLinear" not in n.input[2] for n in convs)
    # ReLU6 kept: every Clip of the float graph is still there, so [0, 6] means the same
    assert clip_count(model) == clip_count(onnx.load(exported_onnx)) > 0
    assert not (violations := check_model(model)), format_violations(violations)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["stpm.int8_target"] == "tensorrt" and meta["stpm.precision"] == "int8"


def test_cpu_target_is_u8s8_for_onnx_runtime(int8, exported_onnx: Path) -> None:
    """What the cpu recipe claims: uint8 activations with zero points, int8 weights, int32 biases,
    Clips folded into the uint8 range — fast on ONNX Runtime, and NOT a TensorRT graph."""
    from stpm_edge.export.trt_check import check_model

    zps = zero_points(int8)
    activations = [z for z in zps if z.dtype == np.uint8]
    assert activations and any(z.any() for z in activations)
    assert {z.dtype for z in zps} == {np.dtype(t) for t in (np.uint8, np.int8, np.int32)}
    assert dequantized_types(int8) == {onnx.TensorProto.INT8, onnx.TensorProto.INT32}
    assert clip_count(int8) < clip_count(onnx.load(exported_onnx))
    rules = {v.rule for v in check_model(int8)}
    assert {"qdq-uint8", "dq-input-type", "qdq-zero-point"} <= rules
    meta = {p.key: p.value for p in int8.metadata_props}
    assert meta["stpm.int8_target"] == "cpu" and meta["stpm.target"] == "cpu"


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def consumers(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if tensor in node.input]


def in_backbone(node: onnx.NodeProto) -> bool:
    return node.name.startswith("/pair/")


def test_graph_has_qdq_nodes(int8) -> None:
    types = [n.op_type for n in int8.graph.node]
    assert types.count("QuantizeLinear") > 0 and types.count("DequantizeLinear") > 0
    assert (
        json.loads(json.dumps({p.key: p.value for p in int8.metadata_props}))["stpm.precision"]
        == "int8"
    )
    onnx.checker.check_model(int8, full_check=True)


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_every_backbone_conv_and_only_those_are_quantised(request, target: str) -> None:
    int8 = onnx.load(request.getfixturevalue("int8_path" if target == "cpu" else "trt_int8_path"))
    made_by = producers(int8)
    convs = [n for n in int8.graph.node if n.op_type == "Conv"]
    quantised = [
        n
        for n in convs
        if n.input[1] in made_by and made_by[n.input[1]].op_type == "DequantizeLinear"
    ]
    backbone = [n for n in convs if in_backbone(n)]
    # both recipes' float head: the stems and efficientnet_lite0's blocks 0-4
    head = [n for n in backbone if re.search(r"/(_conv_stem|_blocks\.[0-4])/", n.name)]
    stems = [n for n in head if "/_conv_stem/" in n.name]
    assert len(backbone) > len(head) and len(stems) == 2  # teacher and student
    # per network: stem; block 0: dw, project; blocks 1-4: expand, dw, project
    assert len(head) == 2 * (1 + 2 + 4 * 3)
    assert {n.name for n in quantised} == {n.name for n in backbone} - {n.name for n in head}
    inits = {i.name: i for i in int8.graph.initializer}
    assert all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in head)
    # the blur convolutions of the tail keep plain float32 weights
    tail = [n for n in convs if not in_backbone(n)]
    assert tail and all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT for n in tail)


def test_no_tail_value_is_quantised(int8) -> None:
    made_by = producers(int8)
    for q in (n for n in int8.graph.node if n.op_type == "QuantizeLinear"):
        source = made_by.get(q.input[0])
        if source is not None and in_backbone(source):
            continue  # a backbone activation (incl. the features the tail reads, dequantised)
        # anything else quantised (the pre-processed image) may only feed the backbone
        deq = [c for c in consumers(int8, q.output[0]) if c.op_type == "DequantizeLinear"]
        users = [u for d in deq for u in consumers(int8, d.output[0])]
        assert users and all(in_backbone(u) for u in users), (q.name, [u.name for u in users])
    # the distance / upsampling / score ops read float tensors computed in float
    for node in int8.graph.node:
        if node.op_type in TAIL_OPS:
            assert not in_backbone(node)
            source = made_by.get(node.input[0])
            assert source is None or source.op_type not in ("DequantizeLinear", "QuantizeLinear"), (
                node.name
            )


def feature_reads(model: onnx.ModelProto) -> dict[str, str]:
    """{feature tensor the backbones write: "float" or "8-bit"} for the tail's reads."""
    made_by, reads = producers(model), {}
    for node in model.graph.node:
        if in_backbone(node) or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for name in node.input:
            writer = made_by.get(name)
            if writer is not None and writer.op_type == "DequantizeLinear":
                q = made_by.get(writer.input[0])
                if q is not None and q.op_type == "QuantizeLinear":
                    reads[q.input[0]] = "8-bit"
            elif writer is not None and in_backbone(writer):
                reads[name] = "float"
    return reads


@pytest.mark.parametrize(
    ("target", "eight_bit"), [("cpu", 0), ("tensorrt", 4)], ids=["cpu", "tensorrt"]
)
def test_cpu_tail_reads_the_features_in_float32(request, target: str, eight_bit: int) -> None:
    """``--target cpu``: the tail reads the six features (3 scales x teacher, student) where the
    backbones write them, in float32, not through an 8-bit copy that ONNX Runtime would dequantise
    once per reader. TensorRT's graph reads dequantised the features a quantised node touches
    (stride 8: block 5 reads it; stride 16: block 10's quantised addition writes it), and the
    stride-4 one, which only float block 3 reads, as written."""
    int8 = onnx.load(request.getfixturevalue("int8_path" if target == "cpu" else "trt_int8_path"))
    reads = feature_reads(int8)
    assert len(reads) == 6, reads
    assert sorted(reads.values()).count("8-bit") == eight_bit, reads


@pytest.mark.parametrize("target", ["cpu", "tensorrt"])
def test_int8_outputs_and_auroc(
    request, target: str, exported_onnx: Path, demo_data, read_rgb
) -> None:
    import onnxruntime as ort
    from sklearn.metrics import roc_auc_score

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    paths = demo_data.test_images()
    frames = np.ascontiguousarray(read_rgb(paths)[..., ::-1])
    labels = np.array([0 if p.parent.name == "good" else 1 for p in paths])
    outs = {}
    int8_path = request.getfixturevalue("int8_path" if target == "cpu" else "trt_int8_path")
    for name, path in (("int8", int8_path), ("fp32", exported_onnx)):
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        outs[name] = dict(
            zip(
                ["anomaly_map", "score", "score_normalized"],
                session.run(["anomaly_map", "score", "score_normalized"], {"image": frames}),
                strict=True,
            )
        )
    got = outs["int8"]
    assert all(np.isfinite(v).all() for v in got.values())
    assert got["anomaly_map"].shape == (len(paths), 1, 64, 64)
    assert ((got["score_normalized"] >= 0) & (got["score_normalized"] <= 1)).all()
    auroc = {k: float(roc_auc_score(labels, v["score"])) for k, v in outs.items()}
    print(
        f"image AUROC on the tiny test set: int8 ({target}) {auroc['int8']:.3f}, "
        f"fp32 {auroc['fp32']:.3f}"
    )
    assert auroc["int8"] >= 0.5
    # quantisation moves scores but keeps them correlated with the fp32 graph's
    assert np.corrcoef(got["score"], outs["fp32"]["score"])[0, 1] > 0.5


def test_checks_compute_a_tensorrt_graph_as_tensorrt_does(
    trt_int8_path: Path, int8_path: Path, demo_data, read_rgb, monkeypatch
) -> None:
    """The export's own fits and parity (``run_onnx``) and the gate, ``quality parity`` and the
    demo (``score_split``, ``check_runner``) run the TensorRT graph with its Q/DQ pairs as written,
    TensorRT's arithmetic, not ONNX Runtime's fused integer kernels (whose int16 pair sums 8-bit
    weights saturate on x86 without VNNI); the cpu graph runs fused, as it deploys."""
    import onnxruntime as ort

    from stpm_edge.data import MVTecCategory
    from stpm_edge.export.int8_gate import score_split
    from stpm_edge.export.parity import run_onnx
    from stpm_edge.runtime import runners
    from stpm_edge.runtime.check_arithmetic import check_runner_kwargs

    frames = np.ascontiguousarray(read_rgb(demo_data.test_images())[..., ::-1])

    def scores(path: Path, level) -> np.ndarray:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run(["score"], {"image": frames})[0]

    as_written, fused = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    )
    assert check_runner_kwargs(trt_int8_path, "ort-cpu") == {"graph_optimization": "disable"}
    assert check_runner_kwargs(int8_path, "ort-cpu") == {"graph_optimization": "all"}
    assert check_runner_kwargs(trt_int8_path, "openvino") == {}  # runs as it deploys
    for path, level in ((trt_int8_path, as_written), (int8_path, fused)):
        got = run_onnx(onnx.load(path), frames, batch=len(frames))["score"]
        np.testing.assert_array_equal(got, scores(path, level), err_msg=path.name)
    # the two arithmetics differ on this graph, so the equality above tells them apart
    assert not np.array_equal(scores(trt_int8_path, as_written), scores(trt_int8_path, fused))

    made = []
    create = runners.create_runner
    monkeypatch.setattr(
        runners, "create_runner", lambda p, **kw: made.append(kw) or create(p, **kw)
    )
    samples = MVTecCategory(demo_data.root, demo_data.category).test()[:2]
    score_split(trt_int8_path, samples)
    score_split(int8_path, samples)
    assert [kw["graph_optimization"] for kw in made] == ["disable", "all"]


def test_doctor_and_recommend_compare_ort_cpu_with_tensorrt_arithmetic(
    trt_int8_path: Path, int8_path: Path, tmp_path: Path
) -> None:
    """``stpm-doctor``'s reference and ``stpm-bench --recommend``'s compute a TensorRT graph as
    written, so ONNX Runtime CPU's fused run of it is a run to compare (not the reference itself);
    a cpu graph's ort-cpu run is its reference, error 0."""
    from stpm_edge.benchmarks.recommend import parity
    from stpm_edge.runtime import doctor

    trt, cpu = parity(str(trt_int8_path), "ort-cpu", None), parity(str(int8_path), "ort-cpu", None)
    assert trt["max_rel_map_error"] > 0 and "error" not in trt, trt
    assert cpu["max_rel_map_error"] == 0.0 and cpu["passed"], cpu
    for path, fused_is_reference in ((trt_int8_path, False), (int8_path, True)):
        out = tmp_path / path.stem
        argv = [str(path), "--backend", "ort-cpu", "--seconds", "0", "--frames", "4"]
        doctor.main([*argv, "--out", str(out), "-q"])
        checks = {c["name"]: c for c in json.loads((out / "doctor.json").read_text())["checks"]}
        error = checks["backend ort-cpu"]["data"]["map_error_of_peak"]
        assert (error == 0.0) is fused_is_reference, (path.name, error)


def test_int8_with_float_input(best_ckpt: Path, demo_data, tmp_path: Path) -> None:
    """Calibration frames are converted to the graph's own input layout (float32 NCHW here)."""
    path = tmp_path / "model_int8_float.onnx"
    argv = [
        str(best_ckpt),
        "-o",
        str(path),
        "--int8",
        "--input",
        "float",
        "--calib",
        str(demo_data.train_good),
        "-q",
    ]
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert export_main(argv) == 0, err.getvalue()
    image = onnx.load(path).graph.input[0]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(path).graph.node)


def test_float_stems_are_the_networks_first_convolutions_only() -> None:
    """resnet18 names its stem conv1, like the first convolution of every block: only the
    networks' own stems (teacher, student, or the stacked pair) stay float."""
    from onnx import helper

    from stpm_edge.export.int8_graph import float_nodes

    names = [
        "/pair/teacher/conv1/Conv",
        "/pair/student/conv1/Conv",
        "/pair/pair/conv1/Conv",
        "/pair/teacher/layer1/layer1.0/conv1/Conv",
        "/pair/student/layer2/layer2.1/conv1/Conv",
    ]
    nodes = [helper.make_node("Conv", ["x", "w"], [f"y{i}"], name=n) for i, n in enumerate(names)]
    graph = helper.make_graph(nodes, "g", [], [])
    model = helper.make_model(graph)
    model.metadata_props.add(key="stpm.backbone", value="resnet18")
    assert float_nodes(model, names) == names[:3]


def test_efficientnet_lite0_keeps_the_blocks_up_to_its_stride_8_feature_float() -> None:
    """efficientnet_lite0's registry entry keeps blocks 0-4 float in the cpu INT8 graph (all of
    their nodes, in every network), and nothing past them: _blocks.1 is not _blocks.10."""
    from onnx import helper

    from stpm_edge.export.int8_graph import float_nodes

    kept = [
        "/pair/teacher/_conv_stem/Conv",
        "/pair/student/_blocks.0/_depthwise_conv/Conv",
        "/pair/teacher/_blocks.1/_expand_conv/Conv",
        "/pair/pair/_blocks.2/Add",
        "/pair/student/_blocks.2/act/Clip",
        "/pair/student/_blocks.3/_project_conv/Conv",
        "/pair/teacher/_blocks.4/Add",
    ]
    quantised = [
        "/pair/teacher/_blocks.10/Add",
        "/pair/student/_blocks.5/_expand_conv/Conv",
        "/pair/teacher/act/Clip",  # the stem's activation: 8-bit, as the stem-only recipe had it
    ]
    op = {"Add": "Add", "Clip": "Clip"}
    nodes = [
        helper.make_node(op.get(n.rsplit("/", 1)[1], "Conv"), ["x"], [f"y{i}"], name=n)
        for i, n in enumerate(kept + quantised)
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [], []))
    model.metadata_props.add(key="stpm.backbone", value="efficientnet_lite0")
    assert float_nodes(model, kept + quantised) == kept


def test_entropy_ranges_clip_a_heavy_tail_that_minmax_keeps(tmp_path: Path) -> None:
    """--calib-method entropy: quantize_static's own 128-bin histogram can only choose the whole
    range (its graphs equalled minmax's); the finer histogram clips a heavy tail."""
    from onnx import TensorProto, helper

    from stpm_edge.export.int8 import FrameReader, entropy_overrides

    weight = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
        "tail",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 16, 16])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "tail.onnx"
    onnx.save(model, path)
    frames = np.abs(np.random.default_rng(0).standard_t(2, (40, 1, 16, 16))).astype(np.float32)
    reader = FrameReader(frames, progress=False)
    overrides = entropy_overrides(path, ["Conv"], reader, num_bins=512)
    (high,) = [o["rmax"] for o in overrides["c"]]  # the Conv output: the frames themselves
    assert 0 < float(high) < 0.5 * frames.max()  # the tail beyond is clipped, not kept
    assert reader.get_next() is not None  # rewound for quantize_static's own pass
