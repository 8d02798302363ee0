"""The OpenVINO runner against ONNX Runtime on the same graphs (skipped without openvino)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import fake_metadata

from stpm_edge.errors import BackendError
from stpm_edge.runtime.runners import (
    OpenVinoRunner,
    OrtRunner,
    available_backends,
    create_runner,
)
from stpm_edge.runtime.runners import openvino as ov_module

ov = pytest.importorskip("openvino", reason="openvino not installed (pip install '.[openvino]')")


def _frames(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _ort(path, feeds):
    with OrtRunner(path, providers=["cpu"], threads=1) as runner:
        return runner.infer(feeds)


@pytest.mark.parametrize("hint", ["auto", "latency", "throughput"])
def test_matches_onnxruntime_on_fake_graph(fake_onnx, hint) -> None:
    with OpenVinoRunner(fake_onnx, threads=1, hint=hint) as runner:
        assert runner.name == "openvino[CPU,f32]"
        assert runner.input_spec() == {"image": (np.dtype(np.uint8), (-1, 64, 64, 3))}
        assert runner.output_names() == ["anomaly_map", "score", "score_normalized"]
        for batch in (1, 3):  # 3: auto/throughput split the batch over async requests
            feeds = {"image": _frames(batch, seed=batch)}
            got, want = runner.infer(feeds), _ort(fake_onnx, feeds)
            assert list(got) == list(want)
            for name in want:
                assert got[name].shape == want[name].shape
                np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_split_batch_keeps_image_order(fake_onnx) -> None:
    """Throughput mode stacks the per-image results back in input order."""
    frames = np.stack([np.full((64, 64, 3), v, np.uint8) for v in (10, 200, 90, 250, 0)])
    with OpenVinoRunner(fake_onnx, threads=1, hint="throughput", num_requests=3) as runner:
        score = runner.infer({"image": frames})["score"]
    np.testing.assert_allclose(score, [10 / 255, 200 / 255, 90 / 255, 250 / 255, 0.0], rtol=1e-6)


def test_metadata_from_openvino_without_onnx(fake_onnx, monkeypatch) -> None:
    """The torch-free runtime may lack onnx: the props come from OpenVINO's rt_info."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with OpenVinoRunner(fake_onnx) as runner:
        assert runner.metadata() == fake_metadata(64)


def test_metadata_falls_back_to_onnx(fake_onnx) -> None:
    class NoRtInfo:
        def get_rt_info(self):
            return {}

    assert ov_module.read_ov_metadata(NoRtInfo(), fake_onnx) == fake_metadata(64)
    assert ov_module.read_ov_metadata(NoRtInfo(), None) == {}


def test_ready_model_and_loader(fake_onnx) -> None:
    model = ov.Core().read_model(str(fake_onnx))
    feeds = {"image": _frames(2)}
    with OpenVinoRunner(model) as runner:
        assert runner.metadata()["stpm.precision"] == "fp32"
        first = runner.infer(feeds)["anomaly_map"]
    with OpenVinoRunner(lambda: str(fake_onnx)) as runner:
        np.testing.assert_array_equal(runner.infer(feeds)["anomaly_map"], first)


def test_float_input_graph(make_fake_onnx, tmp_path) -> None:
    path = make_fake_onnx(tmp_path / "f.onnx", size=32, input_format="float32_nchw")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with OpenVinoRunner(path) as runner:
        assert runner.input_spec() == {"image": (np.dtype(np.float32), (-1, 3, 32, 32))}
        got = runner.infer({"image": x})
    np.testing.assert_allclose(got["score"], _ort(path, {"image": x})["score"], rtol=1e-5)


def test_bf16_is_explicit(fake_onnx) -> None:
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    runner = OpenVinoRunner(fake_onnx, precision="bf16")
    if "BF16" not in caps:
        with pytest.raises(BackendError, match="no BF16 support"):
            runner.load()
        return
    with runner:
        assert runner.name == "openvino[CPU,bf16]"
        feeds = {"image": _frames(2)}
        got, want = runner.infer(feeds)["score"], _ort(fake_onnx, feeds)["score"]
    np.testing.assert_allclose(got, want, rtol=2e-2)  # bf16 keeps ~3 significant digits


def test_argument_and_file_errors(fake_onnx, tmp_path) -> None:
    with pytest.raises(BackendError, match="threads must be >= 1"):
        OpenVinoRunner(fake_onnx, threads=0)
    with pytest.raises(BackendError, match="unknown OpenVINO precision 'fp16'"):
        OpenVinoRunner(fake_onnx, precision="fp16")
    with pytest.raises(BackendError, match="unknown OpenVINO hint"):
        OpenVinoRunner(fake_onnx, hint="fast")
    with pytest.raises(BackendError, match="not found"):
        OpenVinoRunner(tmp_path / "missing.onnx").load()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="OpenVINO could not read"):
        OpenVinoRunner(bad).load()


def test_registry(fake_onnx, tmp_path, monkeypatch) -> None:
    assert "openvino" in available_backends()
    runner = create_runner(fake_onnx, backend="openvino", threads=1, hint="latency")
    assert isinstance(runner, OpenVinoRunner) and runner.threads == 1
    with pytest.raises(BackendError, match="OpenVINO IR; backend 'ort-cpu' cannot run it"):
        create_runner(tmp_path / "model.xml", backend="ort-cpu")
    assert isinstance(create_runner(tmp_path / "model.xml"), OpenVinoRunner)
    # ONNX Runtime options with auto keep ONNX Runtime
    assert isinstance(create_runner(fake_onnx, graph_optimization="basic"), OrtRunner)
    import stpm_edge.runtime.runners as runners

    monkeypatch.setattr(runners, "_has_module", lambda name: name != "openvino")
    with pytest.raises(
        BackendError, match=r"(?s)'openvino' is not available.*stpm-edge\[openvino\]"
    ):
        create_runner(fake_onnx, backend="openvino")


def test_real_model_parity_with_onnxruntime(exported_onnx, real_frames_bgr) -> None:
    """The trained, exported graph: OpenVINO f32 gives ONNX Runtime's maps and verdicts."""
    feeds = {"image": real_frames_bgr[:6]}
    want = _ort(exported_onnx, feeds)
    with OpenVinoRunner(exported_onnx, threads=1) as runner:
        got = runner.infer(feeds)
        threshold = float(runner.metadata()["stpm.image_threshold"])
    peak = np.abs(want["anomaly_map"]).max()
    assert np.abs(got["anomaly_map"] - want["anomaly_map"]).max() <= 1e-4 * peak
    np.testing.assert_allclose(got["score"], want["score"], rtol=1e-4)
    np.testing.assert_array_equal(got["score"] >= threshold, want["score"] >= threshold)


def test_perf_counts(fake_onnx) -> None:
    feeds = {"image": _frames(1)}
    with OpenVinoRunner(fake_onnx, perf_count=True) as runner:
        runner.infer(feeds)
        rows = runner.perf_counts()
    assert rows and all(r["us"] >= 0 and r["name"] and r["type"] for r in rows)
    # the layers of the file each executed node carries (what the stage split attributes)
    assert all(isinstance(r["original"], list) for r in rows)
    assert any(r["original"] for r in rows)
    with OpenVinoRunner(fake_onnx) as runner:
        runner.infer(feeds)
        assert runner.perf_counts() == []


def test_dynamic_batch_compiled_as_single_image(fake_onnx) -> None:
    """The compiled model has batch 1 fixed; callers still see (and may feed) a dynamic batch."""
    for hint in ("latency", "auto"):
        with OpenVinoRunner(fake_onnx, threads=1, hint=hint) as runner:
            compiled = runner._latency.inputs[0].get_partial_shape()
            assert compiled.is_static and list(compiled.to_shape()) == [1, 64, 64, 3]
            assert runner.input_spec()["image"][1] == (-1, 64, 64, 3)
            feeds = {"image": _frames(4, seed=7)}  # latency: four single-image requests in turn
            got, want = runner.infer(feeds), _ort(fake_onnx, feeds)
            np.testing.assert_allclose(got["score"], want["score"], rtol=1e-5, atol=1e-6)
            assert got["anomaly_map"].shape == want["anomaly_map"].shape


def test_single_image_model_leaves_a_ready_model_alone(fake_onnx) -> None:
    model = ov.Core().read_model(str(fake_onnx))
    single = ov_module.single_image_model(model)
    assert model.inputs[0].get_partial_shape()[0].is_dynamic  # not reshaped in place
    assert list(single.inputs[0].get_partial_shape().to_shape()) == [1, 64, 64, 3]
    assert ov_module.single_image_model(single) is None  # already static: nothing to fix


def test_compiled_with_the_settings_asked_for(fake_onnx) -> None:
    """Threads, hint and precision reach the compiled model; ``config`` entries win over them.
    Benchmark scripts compile with :func:`compile_properties` too, so they time the same."""
    with OpenVinoRunner(fake_onnx, threads=1, hint="latency") as runner:
        compiled = runner._latency
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
        assert str(compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
        assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    with OpenVinoRunner(fake_onnx, threads=1, config={"INFERENCE_NUM_THREADS": 2}) as runner:
        assert runner._latency.get_property("INFERENCE_NUM_THREADS") == 2
    props = ov_module.compile_properties("throughput", "fp32", 3, perf_count=True)
    assert props == {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32",
                     "INFERENCE_NUM_THREADS": 3, "PERF_COUNT": True}  # fmt: skip
