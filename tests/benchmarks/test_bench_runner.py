"""The measurement loop against a tiny local fake runner (no ONNX Runtime involved)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stpm_edge.benchmarks import runner as bench_runner
from stpm_edge.benchmarks.runner import (
    Job,
    LoopPolicy,
    add_compute_metrics,
    make_feeds,
    run_job,
    time_loop,
)
from stpm_edge.errors import ConfigError

META = {
    "stpm.input_size": json.dumps([16, 24]),
    "stpm.precision": "int8",
    "stpm.layout": "stacked",
    "stpm.color_order": "RGB",
}


class FakeRunner:
    """Follows the DESIGN.md §6 Runner contract; records what it was fed."""

    def __init__(self, spec: dict) -> None:
        self.name = "fake[CPUExecutionProvider]"
        self.spec = spec
        self.fed: list[dict[str, np.ndarray]] = []
        self.loaded = self.closed = False

    def __enter__(self) -> FakeRunner:
        self.loaded = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def input_spec(self) -> dict:
        return self.spec

    def output_names(self) -> list[str]:
        return ["anomaly_map", "score", "score_normalized"]

    def metadata(self) -> dict[str, str]:
        return dict(META)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.fed.append(feeds)
        n = next(iter(feeds.values())).shape[0]
        return {"score": np.zeros(n, np.float32)}


def test_policy_stopping_rules() -> None:
    assert LoopPolicy(iters=3).done(3, 0.0) and not LoopPolicy(iters=3).done(2, 99.0)
    seconds = LoopPolicy(seconds=1.0, min_iters=5)
    assert not seconds.done(100, 0.5) and not seconds.done(4, 2.0) and seconds.done(5, 1.0)
    default = LoopPolicy(default_iters=200, default_seconds=10.0, min_iters=10)
    assert default.done(200, 0.1)  # enough iterations
    assert default.done(10, 10.0)  # out of time with at least min_iters
    assert not default.done(9, 60.0) and not default.done(199, 9.9)


def test_time_loop_counts_warmup_and_samples() -> None:
    calls = []
    samples = time_loop(lambda: calls.append(1), LoopPolicy(warmup=3, iters=7))
    assert len(calls) == 10 and len(samples) == 7
    assert all(s >= 0 for s in samples)


def test_make_feeds_uint8_and_float() -> None:
    spec = {"image": (np.dtype(np.uint8), (-1, -1, -1, 3))}
    feeds = make_feeds(spec, 4, META, seed=1)
    assert feeds["image"].shape == (4, 16, 24, 3) and feeds["image"].dtype == np.uint8
    assert feeds["image"].std() > 10  # random frames, not a constant
    # real images are resized and, for an RGB graph, channel-swapped from BGR
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[..., 0] = 200  # blue
    fed = make_feeds(spec, 2, META, images=[bgr])["image"]
    assert (fed[..., 2] == 200).all() and (fed[..., 0] == 0).all()
    float_spec = {"image": (np.dtype(np.float32), (-1, 3, 16, 24))}
    with pytest.raises(ConfigError, match="no stpm.mean"):  # never a guessed normalisation
        make_feeds(float_spec, 2, META, images=[bgr])
    float_meta = {
        **META,
        "stpm.mean": json.dumps([0.485, 0.456, 0.406]),
        "stpm.std": json.dumps([0.229, 0.224, 0.225]),
    }
    x = make_feeds(float_spec, 2, float_meta, images=[bgr])["image"]
    assert x.shape == (2, 3, 16, 24) and x.dtype == np.float32
    # RGB NCHW, ImageNet mean/std: blue channel (index 2) = (200/255 - 0.406) / 0.225
    assert x[:, 2].mean() == pytest.approx((200 / 255 - 0.406) / 0.225, rel=1e-5)
    with pytest.raises(ConfigError, match="dynamic axis"):
        make_feeds({"image": (np.dtype(np.uint8), (-1, -1, -1, -1))}, 1, {})


def test_bench_model_with_fake_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRunner({"image": (np.dtype(np.uint8), (-1, 16, 24, 3))})
    monkeypatch.setattr(bench_runner, "_create_runner", lambda *a, **k: fake)
    job = Job("models/fake_int8.onnx", "ort-cpu", batch=3, threads=2,
              policy=LoopPolicy(warmup=2, iters=6))  # fmt: skip
    rec = run_job(job)
    assert fake.closed and len(fake.fed) == 8
    assert fake.fed[0]["image"].shape == (3, 16, 24, 3)
    assert (rec["precision"], rec["layout"], rec["device"]) == ("int8", "stacked", "cpu")
    assert rec["iters"] == 6 and len(rec["samples_ms"]) == 6
    lat = rec["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
    assert rec["throughput_ips"] == pytest.approx(3 * 1000 / lat["mean"])
    assert rec["peak_rss_mb"] > 0 and rec["gpu_peak_mb"] is None
    assert rec["model_name"] == "fake_int8"


def test_compute_metrics_cpu_and_gpu() -> None:
    roof = {
        "usable_cpus": 2,
        "matmul": {"gflops": 100.0, "gflops_by_threads": {"1": 50.0, "2": 100.0}},
        "theoretical": {"per_core_gflops": 80.0},
    }
    rec = {"throughput_ips": 10.0, "threads": 1, "device": "cpu"}
    add_compute_metrics(rec, 2.0, roof)
    assert rec["achieved_gflops"] == pytest.approx(20.0)
    assert rec["roofline_fraction"] == pytest.approx(20.0 / 50.0)  # same thread count
    assert rec["peak_fraction"] == pytest.approx(20.0 / 80.0)
    default = add_compute_metrics(
        {"throughput_ips": 10.0, "threads": None, "device": "cpu"}, 2.0, roof
    )
    assert default["roofline_fraction"] == pytest.approx(0.2)  # all usable CPUs
    assert default["peak_fraction"] == pytest.approx(20.0 / 160.0)
    gpu = add_compute_metrics({"throughput_ips": 10.0, "threads": None, "device": "gpu"}, 2.0, roof)
    assert gpu["achieved_gflops"] == pytest.approx(20.0) and gpu["roofline_fraction"] is None
    unknown = add_compute_metrics({"throughput_ips": 10.0, "device": "cpu"}, None, roof)
    assert unknown["achieved_gflops"] is None


def test_unknown_mode() -> None:
    with pytest.raises(ConfigError, match="unknown benchmark mode"):
        run_job(Job("m.onnx", "auto", 1, None, mode="warp"))
