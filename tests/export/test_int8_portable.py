"""The cpu INT8 graph means the same on every x86 CPU, with VNNI or without.

Without VNNI, ONNX Runtime's integer kernels add each pair of u8 x s8 products into int16
(VPMADDUBSW) and saturate above 32767. The cpu recipe keeps weights in 7 bits so no pair can get
there. One test runs the graph on an emulated Haswell (AVX2, no VNNI) with QEMU's user-mode
emulator and compares it with this host's VNNI kernels; another, on any host, compares it with the
same integers through ONNX Runtime's unsigned-weight kernels, which cannot saturate (on an AVX2
host that is the check of the real CPU).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

INT16_MAX = 32767
UINT8_MAX = 255

# runs one graph on frames saved as .npy and saves its outputs (a fresh process: under QEMU the
# emulated CPU decides which kernels ONNX Runtime picks)
RUN_GRAPH = """
import sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
frames = np.load(sys.argv[2])
outputs = session.run(["anomaly_map", "score"], {session.get_inputs()[0].name: frames})
np.savez(sys.argv[3], anomaly_map=outputs[0], score=outputs[1])
"""


def conv_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    """The int8 weight tensors that DequantizeLinear feeds into a convolution."""
    inits = {i.name: i for i in model.graph.initializer}
    dq_out = {
        n.output[0]: n.input[0]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits
    }
    weights = []
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in dq_out:
            tensor = inits[dq_out[node.input[1]]]
            assert tensor.data_type == onnx.TensorProto.INT8
            weights.append(numpy_helper.to_array(tensor))
    return weights


def test_cpu_target_weights_keep_every_int16_pair_sum_unsaturated(int8) -> None:
    weights = conv_weights(int8)
    assert weights, "no quantised convolution found"
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert 2 * UINT8_MAX * largest <= INT16_MAX, f"|weight| up to {largest}: 8-bit weights"


def host_has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


def run_graph(prefix: list[str], graph: Path, frames: Path, out: Path) -> dict[str, np.ndarray]:
    cmd = [*prefix, sys.executable, "-c", RUN_GRAPH, str(graph), str(frames), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(out) as saved:
        return {k: saved[k] for k in saved.files}


def prepared_test_frames(graph: Path, demo_data, tmp_path: Path) -> Path:
    """Every other test image of the demo category, prepared for ``graph``, saved as .npy."""
    from stpm_edge.runtime.image import decode_bgr
    from stpm_edge.runtime.metadata import parse_metadata, read_model_metadata
    from stpm_edge.runtime.preprocess import prepare_batch

    info = parse_metadata(read_model_metadata(graph))
    paths = sorted((demo_data.root / demo_data.category / "test").rglob("*.png"))[::2]
    frames = tmp_path / "frames.npy"
    np.save(frames, prepare_batch([decode_bgr(p) for p in paths], info))
    return frames


@pytest.mark.skipif(
    platform.machine() != "x86_64" or shutil.which("qemu-x86_64") is None,
    reason="needs x86-64 and QEMU's user-mode emulator (apt-get install qemu-user)",
)
@pytest.mark.skipif(
    not host_has_vnni(), reason="compares an emulated AVX2 CPU with this host's VNNI kernels"
)
def test_cpu_graph_gives_the_same_output_without_vnni(
    int8_path: Path,
    demo_data,
    tmp_path: Path,
) -> None:
    frames = prepared_test_frames(int8_path, demo_data, tmp_path)
    vnni = run_graph([], int8_path, frames, tmp_path / "vnni.npz")
    haswell = run_graph(
        ["qemu-x86_64", "-cpu", "Haswell"], int8_path, frames, tmp_path / "avx2.npz"
    )
    peak = float(np.abs(vnni["anomaly_map"]).max())
    gap = float(np.abs(vnni["anomaly_map"] - haswell["anomaly_map"]).max())
    assert gap <= 1e-5 * peak, f"maps differ by {gap / peak:.2%} of their peak without VNNI"
    np.testing.assert_allclose(haswell["score"], vnni["score"], rtol=1e-5)


def with_unsigned_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose int8 weights are uint8 with zero point 128: the same integers, which ONNX
    Runtime multiplies with its U8U8 kernels. Those widen both operands to int16 and add pairs in
    int32, so they never saturate: an exact reference on any x86 CPU."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inits = {i.name: i for i in copy.graph.initializer}
    done: set[str] = set()
    for node in copy.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        for name, shift in ((node.input[0], 128), (node.input[2], 128)):
            tensor = inits[name]
            if name in done or tensor.data_type != onnx.TensorProto.INT8:
                continue
            values = numpy_helper.to_array(tensor).astype(np.int16) + shift
            tensor.CopyFrom(numpy_helper.from_array(values.astype(np.uint8), name))
            done.add(name)
    assert done, "no int8 weight found"
    return copy


def test_cpu_graph_equals_a_reference_that_cannot_saturate(
    int8: onnx.ModelProto, int8_path: Path, demo_data, tmp_path: Path
) -> None:
    """On this host, whatever its CPU: the graph's signed-weight kernels (which add u8 x s8 pairs
    in int16 where there is no VNNI) against the same integers through the U8U8 kernels. On an
    AVX2 CPU an 8-bit graph fails it (the demo's brick checkpoint: scores 5.7 % apart)."""
    unsigned = tmp_path / "u8.onnx"
    onnx.save(with_unsigned_weights(int8), unsigned)
    frames = prepared_test_frames(int8_path, demo_data, tmp_path)
    want = run_graph([], unsigned, frames, tmp_path / "u8.npz")
    got = run_graph([], int8_path, frames, tmp_path / "s8.npz")
    peak = float(np.abs(want["anomaly_map"]).max())
    gap = float(np.abs(got["anomaly_map"] - want["anomaly_map"]).max())
    assert gap <= 1e-5 * peak, f"maps differ by {gap / peak:.2%} of their peak"
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5)


def with_8bit_weight(model: onnx.ModelProto, path: Path) -> Path:
    """A copy of ``model`` where one dense convolution's weight reaches 127 (an older export)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inits = {i.name: i for i in copy.graph.initializer}
    weight = next(
        inits[n.input[0]]
        for n in copy.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].data_type == onnx.TensorProto.INT8
        and inits[n.input[0]].dims[1] > 1  # dense: several input channels per output
    )
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] = 127
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(copy, path)
    return path


@pytest.mark.parametrize(
    ("flags", "eight_bit", "status"),
    [
        (["avx2", "fma"], False, "pass"),  # 7-bit weights: fine everywhere
        (["avx2", "fma"], True, "warn"),  # an older export on a CPU without VNNI
        (["avx2", "avx512_vnni"], True, "pass"),
        (["avx2", "avx_vnni"], True, "pass"),
        (["asimd"], True, "pass"),  # not x86
    ],
)
def test_doctor_warns_of_8bit_weights_on_a_cpu_without_vnni(
    int8, int8_path: Path, tmp_path: Path, flags: list[str], eight_bit: bool, status: str
) -> None:
    from stpm_edge.runtime.doctor.model import int8_weights_check, model_metadata

    path = with_8bit_weight(int8, tmp_path / "old.onnx") if eight_bit else int8_path
    check = int8_weights_check(path, {"cpu": {"flags": flags}}, model_metadata(path))
    assert check is not None and check.status == status, check
    assert check.data["largest_weight"] == (127 if eight_bit else 64)
    if status == "warn":
        assert "Note: re-export" in check.detail


def test_doctor_has_no_int8_row_for_a_float_graph(exported_onnx: Path) -> None:
    from stpm_edge.runtime.doctor.model import int8_weights_check, model_metadata

    env = {"cpu": {"flags": ["avx2"]}}
    assert int8_weights_check(exported_onnx, env, model_metadata(exported_onnx)) is None
