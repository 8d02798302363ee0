"""Runner base checks, the ONNX Runtime runner and create_runner (CPU)."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import numpy as np
import pytest

from stpm_edge.errors import BackendError
from stpm_edge.runtime.runners import (
    OrtRunner,
    available_backends,
    create_runner,
    format_shape,
)


def _image(n: int = 1, size: int = 64, value: int = 100) -> np.ndarray:
    return np.full((n, size, size, 3), value, np.uint8)


def test_ort_runner_infers(fake_onnx) -> None:
    with OrtRunner(fake_onnx, providers=["cpu"], threads=1) as runner:
        assert runner.name == "onnxruntime[CPUExecutionProvider]"
        spec = runner.input_spec()
        assert spec == {"image": (np.dtype(np.uint8), (-1, 64, 64, 3))}
        assert runner.output_names() == ["anomaly_map", "score", "score_normalized"]
        assert runner.metadata()["stpm.format"] == "stpm-edge-onnx/1"
        batch = np.concatenate([_image(1, value=51), _image(1, value=204)])
        out = runner.infer({"image": batch})
        assert out["anomaly_map"].shape == (2, 1, 64, 64)
        np.testing.assert_allclose(out["score"], [0.2, 0.8], atol=1e-6)
        np.testing.assert_allclose(out["score_normalized"], [0.2, 0.8], atol=1e-6)
        assert runner.last_inference_ms > 0


@pytest.mark.parametrize(
    ("feeds", "match"),
    [
        (
            {"image": np.zeros((1, 3, 64, 64), np.float32)},
            r"input 'image' expected uint8 \(N,64,64,3\), got float32 \(1,3,64,64\)",
        ),
        (
            {"image": np.zeros((1, 32, 32, 3), np.uint8)},
            r"expected uint8 \(N,64,64,3\), got uint8 \(1,32,32,3\)",
        ),
        ({"image": np.zeros((64, 64, 3), np.uint8)}, r"got uint8 \(64,64,3\)"),
        ({"images": _image()}, r"missing \['image'\], unknown \['images'\]"),
        ({"image": [[1, 2]]}, "must be a numpy.ndarray"),
    ],
)
def test_feed_checks(fake_onnx, feeds, match) -> None:
    with OrtRunner(fake_onnx) as runner, pytest.raises(BackendError, match=match):
        runner.infer(feeds)


def test_not_loaded_and_gc_warning(fake_onnx) -> None:
    runner = OrtRunner(fake_onnx)
    with pytest.raises(BackendError, match=r"infer\(\) called before load\(\)"):
        runner.infer({"image": _image()})
    runner.load()
    with pytest.warns(ResourceWarning, match="garbage-collected while still loaded"):
        del runner
        gc.collect()


def test_close_is_idempotent(fake_onnx) -> None:
    runner = OrtRunner(fake_onnx).load()
    runner.close()
    runner.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del runner
        gc.collect()


def test_io_binding_matches_plain_run(fake_onnx) -> None:
    batch = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    with OrtRunner(fake_onnx) as plain, OrtRunner(fake_onnx, io_binding=True) as bound:
        a, b = plain.infer({"image": batch}), bound.infer({"image": batch})
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_profiling_writes_into_given_prefix(fake_onnx, tmp_path) -> None:
    with OrtRunner(fake_onnx, profile_prefix=tmp_path / "prof") as runner:
        runner.infer({"image": _image()})
        path = runner.end_profiling()
    assert path is not None and runner.profile_path == path
    written = Path(path) if Path(path).is_absolute() else Path.cwd() / path
    assert written.is_file() and written.parent == tmp_path and written.name.startswith("prof")


def test_loader_callable_and_bytes(fake_onnx) -> None:
    calls = []

    def loader() -> bytes:
        calls.append(1)
        return fake_onnx.read_bytes()

    runner = OrtRunner(loader)
    assert calls == []  # lazy: nothing happens before load
    with runner:
        assert runner.infer({"image": _image()})["score"].shape == (1,)
    assert calls == [1]
    with OrtRunner(fake_onnx.read_bytes()) as runner:
        assert runner.input_spec()["image"][1] == (-1, 64, 64, 3)


def test_unavailable_provider_names_available(fake_onnx) -> None:
    with pytest.raises(
        BackendError,
        match=r"(?s)\['CUDAExecutionProvider'\] requested but not available.*available: \[",
    ):
        OrtRunner(fake_onnx, providers=["cuda"]).load()


def test_missing_file(tmp_path) -> None:
    with pytest.raises(BackendError, match="not found"):
        OrtRunner(tmp_path / "nope.onnx").load()


def test_bad_options(fake_onnx) -> None:
    with pytest.raises(BackendError, match="graph_optimization"):
        OrtRunner(fake_onnx, graph_optimization="max")
    with pytest.raises(BackendError, match="threads must be >= 1"):
        OrtRunner(fake_onnx, threads=0)


def test_available_backends_cpu() -> None:
    backends = available_backends()
    assert "ort-cpu" in backends
    assert backends == [b for b in ("tensorrt", "ort-trt", "ort-cuda", "ort-cpu") if b in backends]


def test_create_runner_auto_and_explicit(fake_onnx) -> None:
    runner = create_runner(fake_onnx, threads=1)
    assert isinstance(runner, OrtRunner) and not runner.is_loaded
    with runner:
        expected = {"ort-trt": "Tensorrt", "ort-cuda": "CUDA", "ort-cpu": "CPU"}
        best = next(b for b in available_backends() if b.startswith("ort-"))
        assert expected[best] in runner.name
    with create_runner(fake_onnx, backend="ort-cpu") as runner:
        assert runner.name == "onnxruntime[CPUExecutionProvider]"


def test_create_runner_errors(fake_onnx, tmp_path) -> None:
    if "ort-cuda" not in available_backends():
        with pytest.raises(
            BackendError, match=r"(?s)'ort-cuda' is not available here.*available: \["
        ):
            create_runner(fake_onnx, backend="ort-cuda")
    with pytest.raises(BackendError, match="unknown backend 'gpu'"):
        create_runner(fake_onnx, backend="gpu")
    with pytest.raises(BackendError, match="runs engines, not model.onnx"):
        create_runner(fake_onnx, backend="tensorrt")
    with pytest.raises(BackendError, match="cannot tell the model type"):
        create_runner(tmp_path / "model.pt")
    with pytest.raises(BackendError, match="backend 'ort-cpu' cannot run it"):
        create_runner(tmp_path / "model.engine", backend="ort-cpu")


def test_format_shape() -> None:
    assert format_shape((-1, 256, 256, 3)) == "(N,256,256,3)"
    assert format_shape((None, 3, None)) == "(N,3,?)"
