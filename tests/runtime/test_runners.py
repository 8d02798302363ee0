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
    import stpm_edge.runtime.runners as runners

    backends = available_backends()
    assert "ort-cpu" in backends
    # best-first in the registry's declared order (runners.BACKENDS), whatever backends exist
    assert backends == [b for b in runners.BACKENDS if b in backends]


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


# -- the TensorRT execution provider's options (no GPU here: a fake onnxruntime records them) ---


class _FakeOrt:
    """onnxruntime double offering the TensorRT provider; records what InferenceSession got."""

    __version__ = "1.20.1"

    def __init__(self) -> None:
        import onnxruntime

        self.SessionOptions = onnxruntime.SessionOptions
        self.GraphOptimizationLevel = onnxruntime.GraphOptimizationLevel
        self.created: list[list] = []
        fake = self

        class InferenceSession:
            def __init__(self, model, sess_options=None, providers=()) -> None:
                fake.created.append(list(providers))
                # the real CPU session stands in for the GPU one
                self._real = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
                self._providers = [p if isinstance(p, str) else p[0] for p in providers]

            def get_providers(self):
                return list(self._providers)

            def __getattr__(self, name):
                return getattr(self._real, name)

        self.InferenceSession = InferenceSession

    @staticmethod
    def get_available_providers():
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    def trt_options(self) -> dict[str, str]:
        (providers,) = self.created
        name, options = providers[0]
        assert name == "TensorrtExecutionProvider"
        return options


@pytest.fixture
def fake_ort(monkeypatch):
    from stpm_edge.runtime.runners import ort as ort_runner

    fake = _FakeOrt()
    monkeypatch.setattr(ort_runner, "import_onnxruntime", lambda: fake)
    monkeypatch.setattr(ort_runner, "tensorrt_version", lambda: "10.3.0")
    monkeypatch.setattr(ort_runner, "gpu_name", lambda: "NVIDIA Jetson AGX Orin")
    return fake


def _metadata_onnx(make_fake_onnx, path: Path, **extra: str) -> Path:
    from conftest import fake_metadata

    return make_fake_onnx(path, size=64, metadata={**fake_metadata(64), **extra})


def test_trt_provider_gets_profile_from_default_batch_range(fake_onnx, fake_ort) -> None:
    with OrtRunner(fake_onnx, providers=["tensorrt", "cuda", "cpu"]) as runner:
        assert runner.name == "onnxruntime[TensorrtExecutionProvider]"
        out = runner.infer({"image": _image(3)})  # the session works with these options
    assert out["score"].shape == (3,)
    assert fake_ort.trt_options() == {
        "trt_profile_min_shapes": "image:1x64x64x3",
        "trt_profile_opt_shapes": "image:1x64x64x3",
        "trt_profile_max_shapes": "image:8x64x64x3",
    }
    assert fake_ort.created[0][1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_trt_profile_from_metadata_then_caller(make_fake_onnx, tmp_path, fake_ort) -> None:
    model = _metadata_onnx(
        make_fake_onnx, tmp_path / "m.onnx", **{"stpm.batch_range": "[2, 4, 16]"}
    )
    with OrtRunner(model, providers=["tensorrt"]):
        pass
    options = fake_ort.trt_options()
    assert options["trt_profile_min_shapes"] == "image:2x64x64x3"
    assert options["trt_profile_opt_shapes"] == "image:4x64x64x3"
    assert options["trt_profile_max_shapes"] == "image:16x64x64x3"

    fake_ort.created.clear()
    with OrtRunner(model, providers=["tensorrt"], trt_batch_range=(1, 1, 2)):
        pass
    assert fake_ort.trt_options()["trt_profile_max_shapes"] == "image:2x64x64x3"

    with pytest.raises(BackendError, match=r"trt_batch_range \(4, 2, 8\) is not a batch range"):
        OrtRunner(model, providers=["tensorrt"], trt_batch_range=(4, 2, 8)).load()


def test_trt_caches_keyed_by_versions_and_gpu(fake_onnx, tmp_path, fake_ort) -> None:
    with OrtRunner(fake_onnx.read_bytes(), providers=["tensorrt"], trt_cache_dir=tmp_path / "c"):
        pass
    options = fake_ort.trt_options()
    folder = tmp_path / "c" / "ort1.20.1_trt10.3.0_nvidia-jetson-agx-orin"
    assert folder.is_dir()
    assert options["trt_engine_cache_enable"] == "True"
    assert options["trt_timing_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(folder)
    assert "trt_fp16_enable" not in options  # strongly typed build: the graph's own precision


def test_trt_fp16_only_for_fp16_graphs(make_fake_onnx, tmp_path, fake_ort) -> None:
    fp32 = _metadata_onnx(make_fake_onnx, tmp_path / "a.onnx")
    with pytest.raises(BackendError, match="trt_fp16 asked for a fp32 graph"):
        OrtRunner(fp32, providers=["tensorrt"], trt_fp16=True).load()
    fp16 = _metadata_onnx(make_fake_onnx, tmp_path / "b.onnx", **{"stpm.precision": "fp16"})
    with OrtRunner(fp16, providers=["tensorrt"]):
        pass
    assert "trt_fp16_enable" not in fake_ort.trt_options()
    fake_ort.created.clear()
    with OrtRunner(fp16, providers=["tensorrt"], trt_fp16=True):
        pass
    assert fake_ort.trt_options()["trt_fp16_enable"] == "True"


def test_trt_cache_key_and_versions(monkeypatch) -> None:
    from stpm_edge.runtime.runners import ort as ort_runner

    assert ort_runner.trt_cache_key("1.20.1", None, None) == "ort1.20.1_trtunknown_gpu"
    assert (
        ort_runner.trt_cache_key("1.22.0", "10.3.0.30", "NVIDIA GeForce RTX 4090")
        == "ort1.22.0_trt10.3.0.30_nvidia-geforce-rtx-4090"
    )
    monkeypatch.setattr(ort_runner.importlib.metadata, "version", lambda dist: "10.3.0.30")
    assert ort_runner.tensorrt_version() == "10.3.0.30"
    assert ort_runner.trt_profile_options({"image": (None, None, None, 3)}, (1, 1, 8)) == {}
    assert ort_runner.trt_profile_options({"image": (1, 64, 64, 3)}, (1, 1, 8)) == {}
