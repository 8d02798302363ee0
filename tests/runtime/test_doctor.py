"""stpm-doctor on ONNX Runtime CPU: the report, its exit code, and the failures it must catch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import fake_metadata
from onnx import TensorProto, helper, numpy_helper

from stpm_edge.runtime import doctor
from stpm_edge.runtime.runners import available_backends

REPO = Path(__file__).resolve().parents[2]
FAST = ["--seconds", "0", "--frames", "4"]


def run_doctor(tmp_path: Path, *argv: str) -> tuple[int, dict, str]:
    out = tmp_path / "report"
    rc = doctor.main([*argv, "--out", str(out), *FAST, "-q"])
    report = json.loads((out / "doctor.json").read_text()) if (out / "doctor.json").exists() else {}
    md = (out / "doctor.md").read_text() if (out / "doctor.md").exists() else ""
    return rc, report, md


def checks_by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def scaled_map_model(src: Path, dst: Path, factor: float, precision: str = "fp32") -> Path:
    """The fake graph with its map multiplied by ``factor`` (the /255 constant changed)."""
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name == "c255":
            init.CopyFrom(numpy_helper.from_array(np.array(255.0 / factor, np.float32), "c255"))
    props = {p.key: p.value for p in model.metadata_props}
    props["stpm.precision"] = precision
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    onnx.save(model, str(dst))
    return dst


def test_exported_model_passes_on_ort_cpu(exported_onnx: Path, tmp_path: Path, capsys) -> None:
    rc, report, md = run_doctor(tmp_path, str(exported_onnx))
    assert rc == 0, md
    checks = checks_by_name(report)
    cpu = checks["backend ort-cpu"]
    assert cpu["status"] == "pass"
    assert cpu["data"]["map_error_of_peak"] == 0.0  # same graph, same provider
    assert cpu["data"]["verdicts_agree"] == cpu["data"]["frames"] == 4
    assert 0 < cpu["data"]["latency"]["p50_ms"] <= cpu["data"]["latency"]["p99_ms"]
    assert checks["reference (ort-cpu)"]["status"] == "pass"
    trt = next(c for c in report["checks"] if c["name"].startswith("TensorRT"))
    assert trt["status"] in ("pass", "skip")  # skip only while the check module is absent
    env = report["environment"]
    assert env["python"] == sys.version.split()[0]
    assert set(env["opencv"]["video_io"]) >= {"gstreamer", "ffmpeg"}
    assert "CPUExecutionProvider" in env["onnxruntime"]["providers"]
    assert report["model"]["metadata"]["stpm.precision"] == "fp32"  # how the model was exported
    assert "precision fp32" in md
    assert report["ok"] is True and md.startswith("# stpm-doctor: PASS")
    assert "# stpm-doctor: PASS" in capsys.readouterr().out  # printed as well as written


def parts_folder(tmp_path: Path) -> Path:
    """Two in-distribution 'part' images for the fake model: one dark (OK), one bright (NG)."""
    import cv2

    folder = tmp_path / "parts"
    folder.mkdir(exist_ok=True)
    for i, value in enumerate((10, 250)):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((30, 40, 3), value, np.uint8))
    return folder


def test_parity_beyond_tolerance_fails(fake_onnx: Path, tmp_path: Path) -> None:
    # the same precision as the reference: every frame is judged with fp32's tolerance
    off = scaled_map_model(fake_onnx, tmp_path / "off32.onnx", 1.02, "fp32")
    rc, report, _ = run_doctor(tmp_path / "a", str(off), "--reference", str(fake_onnx))
    cpu = checks_by_name(report)["backend ort-cpu"]
    assert rc == 1 and report["ok"] is False
    assert cpu["status"] == "fail"
    assert cpu["data"]["map_error_of_peak"] == pytest.approx(0.02, rel=1e-3)  # > 5e-3
    assert cpu["data"]["tolerance"]["map_rel"] == doctor.TOLERANCES["fp32"].map_rel


def test_cross_precision_is_judged_on_images_with_its_tolerance(
    fake_onnx: Path, tmp_path: Path
) -> None:
    parts = str(parts_folder(tmp_path))
    ref = ["--reference", str(fake_onnx), "--images", parts]
    near = scaled_map_model(fake_onnx, tmp_path / "near8.onnx", 1.02, "int8")  # 2 % < 0.35
    rc, report, _ = run_doctor(tmp_path / "a", str(near), *ref)
    cpu = checks_by_name(report)["backend ort-cpu"]
    assert rc == 0, cpu
    assert cpu["data"]["judged"] is True and cpu["data"]["frames"] == 2  # the images only
    assert cpu["data"]["all_frames"]["frames"] == 6
    assert cpu["data"]["tolerance"]["map_rel"] == doctor.TOLERANCES["int8"].map_rel

    far = scaled_map_model(fake_onnx, tmp_path / "far8.onnx", 1.5, "int8")  # 50 % > 0.35
    rc, report, _ = run_doctor(tmp_path / "b", str(far), *ref)
    assert rc == 1
    assert checks_by_name(report)["backend ort-cpu"]["status"] == "fail"

    # without images a cross-precision pair is not judged (synthetic frames are out of
    # distribution for INT8), only checked for finite outputs
    rc, report, _ = run_doctor(tmp_path / "c", str(far), "--reference", str(fake_onnx))
    cpu = checks_by_name(report)["backend ort-cpu"]
    assert rc == 0 and cpu["data"]["judged"] is False
    assert "not judged without --images" in cpu["detail"]


def test_image_folder_adds_frames(fake_onnx: Path, tmp_path: Path) -> None:
    parts = parts_folder(tmp_path)
    rc, report, _ = run_doctor(tmp_path, str(fake_onnx), "--images", str(parts))
    checks = checks_by_name(report)
    assert rc == 0
    assert checks["reference (ort-cpu)"]["data"]["frames"] == 6  # 4 synthetic + 2 images
    assert checks["backend ort-cpu"]["data"]["frames"] == 6
    assert checks["backend ort-cpu"]["data"]["verdicts_agree"] == 6


def test_verdict_flip_outside_band_fails() -> None:
    ref = doctor.Outputs(np.ones((2, 4, 4)), np.array([1.0, 1.0]), np.array([0.3, 0.52]))
    tol = doctor.Tolerance(map_rel=1.0, score_rel=1.0, verdict_band=0.05)
    # frame 1 is borderline (0.52): its flip is tolerated; frame 0 (0.3) flipping is not
    near = doctor.Outputs(ref.maps, ref.scores, np.array([0.3, 0.49]))
    far = doctor.Outputs(ref.maps, ref.scores, np.array([0.6, 0.52]))
    assert doctor.compare_outputs(ref, near, tol)[0] is True
    ok, data = doctor.compare_outputs(ref, far, tol)
    assert ok is False and data["verdict_flips_outside_band"] == 1 and data["verdicts_agree"] == 1


@pytest.mark.skipif("ort-cuda" in available_backends(), reason="CUDA provider present")
def test_backend_that_errors_fails_the_run(fake_onnx: Path, tmp_path: Path) -> None:
    rc, report, md = run_doctor(tmp_path, str(fake_onnx), "--backends", "ort-cpu,ort-cuda")
    checks = checks_by_name(report)
    assert rc == 1
    assert checks["backend ort-cpu"]["status"] == "pass"
    assert checks["backend ort-cuda"]["status"] == "fail"
    assert "not available" in checks["backend ort-cuda"]["detail"]
    assert "| backend ort-cuda | FAIL |" in md


def test_tensorrt_without_engine_is_skipped(fake_onnx: Path, tmp_path: Path) -> None:
    plan = doctor.backend_plan(["tensorrt", "ort-cpu"], [], fake_onnx, None)
    assert plan[0][:2] == ("tensorrt", None) and "--engine" in plan[0][2]
    assert plan[1] == ("ort-cpu", fake_onnx, "")
    # an engine given on a machine without TensorRT is checked, and fails
    engine = tmp_path / "model.engine"
    assert doctor.backend_plan(None, ["ort-cpu"], fake_onnx, engine)[-1] == ("tensorrt", engine, "")


class TrtDevice:
    """The shared TensorRT/CUDA double (tests/fakes), wired into the doctor's detector factory."""

    def __init__(self, monkeypatch, tmp_path: Path, onnx_path: Path) -> None:
        from fakes.cuda import FakeCudart
        from fakes.tensorrt import FakeTensorRT, Faults

        from stpm_edge.export import trt_build
        from stpm_edge.runtime.detector import AnomalyDetector
        from stpm_edge.runtime.runners.trt import TrtRunner

        self.cudart, self.faults = FakeCudart(), Faults()
        trt = FakeTensorRT("10.3.0", cudart=self.cudart, faults=self.faults)
        monkeypatch.setattr(trt_build, "_import_cudart", lambda: self.cudart)
        info = trt_build.build_engine(
            onnx_path, tmp_path / "model.engine", batch=(1, 4, 8), trt_module=trt
        )
        self.engine = info.engine_path
        real = doctor.backends._detector  # the factory the reference and backend checks call

        def detector(path: Path, backend: str, **runner_kwargs):
            if backend != "tensorrt":
                return real(path, backend, **runner_kwargs)
            runner = TrtRunner(path, trt_module=trt, cudart_module=self.cudart)
            return AnomalyDetector(runner)

        monkeypatch.setattr(doctor.backends, "_detector", detector)


def test_engine_checked_through_the_tensorrt_double(fake_onnx, tmp_path, monkeypatch) -> None:
    device = TrtDevice(monkeypatch, tmp_path, fake_onnx)
    argv = [str(fake_onnx), "--engine", str(device.engine), "--backends", "ort-cpu,tensorrt"]
    rc, report, md = run_doctor(tmp_path / "ok", *argv)
    trt = checks_by_name(report)["backend tensorrt"]
    assert rc == 0, md
    assert trt["status"] == "pass" and trt["data"]["runner"].startswith("tensorrt")
    assert trt["data"]["map_error_of_peak"] < 1e-6 and trt["data"]["latency"]["iters"] >= 10

    device.faults.execute_fails = True  # execute_async_v3 returns False: the runner raises
    rc, report, _ = run_doctor(tmp_path / "bad", *argv)
    trt = checks_by_name(report)["backend tensorrt"]
    assert rc == 1 and trt["status"] == "fail" and "BackendError" in trt["detail"]


def uint8_transpose_first(path: Path, size: int = 64, **props: str) -> Path:
    """The fake graph with today's bug: Transpose on the uint8 input before its Cast."""
    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])
    nodes = [
        helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["t"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Div", ["m", "c255"], ["anomaly_map"]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Identity", ["score"], ["score_normalized"]),
    ]
    outs = [
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, size, size]),
        helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
        helper.make_tensor_value_info("score_normalized", TensorProto.FLOAT, ["N"]),
    ]
    init = [helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0])]
    graph = helper.make_graph(nodes, "bad", [inp], outs, initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(model, {**fake_metadata(size), **props})
    onnx.save(model, str(path))
    return path


def test_tensorrt_violation_fails_the_run(tmp_path: Path) -> None:
    bad = uint8_transpose_first(tmp_path / "bad.onnx")
    rc, report, md = run_doctor(tmp_path, str(bad))
    trt = next(c for c in report["checks"] if c["name"].startswith("TensorRT"))
    assert rc == 1
    assert trt["status"] == "fail"
    assert any(v["op_type"] == "Transpose" for v in trt["data"]["violations"])
    assert trt["detail"].startswith(f"{len(trt['data']['violations'])} violation(s): ")
    assert checks_by_name(report)["backend ort-cpu"]["status"] == "pass"  # it runs on ORT CPU
    assert "TensorRT 10.3 compatibility | FAIL" in md


def test_tensorrt_violation_warns_for_an_int8_graph_of_another_target(tmp_path: Path) -> None:
    props = {"stpm.precision": "int8", "stpm.int8_target": "cpu"}
    bad = uint8_transpose_first(tmp_path / "cpu_int8.onnx", **props)
    rc, report, _ = run_doctor(tmp_path, str(bad))
    trt = next(c for c in report["checks"] if c["name"].startswith("TensorRT"))
    assert (rc, trt["status"]) == (0, "warn")
    assert "exported for target cpu" in trt["detail"] and trt["data"]["violations"]
    bad = uint8_transpose_first(
        tmp_path / "trt_int8.onnx", **{**props, "stpm.int8_target": "tensorrt"}
    )
    rc, report, _ = run_doctor(tmp_path / "b", str(bad))
    assert rc == 1  # meant for TensorRT: a violation fails


def test_violation_summary_is_short() -> None:
    from types import SimpleNamespace as V

    many = [V(rule="qdq-zero-point", node=f"n{i}") for i in range(300)] + [
        V(rule="topk-k", node="t")
    ]
    text = doctor.summarize_violations(many, lambda vs: "\n".join(v.node for v in vs), first=3)
    assert text.splitlines() == [
        "301 violation(s): qdq-zero-point x300, topk-k x1",
        "n0",
        "n1",
        "n2",
        "  ... (all of them in doctor.json)",
    ]


def test_tensorrt_check_skipped_without_onnx(fake_onnx: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    check = doctor.tensorrt_check(fake_onnx, "10.3")
    assert (check.status, check.detail) == (
        "skip",
        "skipped: onnx not installed (pip install onnx)",
    )


def test_never_overwrites_a_report_without_force(fake_onnx: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "doctor.md").write_text("earlier report")
    assert doctor.main([str(fake_onnx), "--out", str(out), *FAST]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (out / "doctor.md").read_text() == "earlier report"
    assert not (out / "doctor.json").exists()
    assert doctor.main([str(fake_onnx), "--out", str(out), *FAST, "--force", "-q"]) == 0
    assert (out / "doctor.md").read_text().startswith("# stpm-doctor: PASS")


def test_usage_errors_exit_2(fake_onnx: Path, tmp_path: Path, capsys) -> None:
    assert doctor.main([str(tmp_path / "missing.onnx"), "--out", str(tmp_path)]) == 2
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    assert doctor.main([str(engine), "--out", str(tmp_path)]) == 2
    assert "--engine" in capsys.readouterr().err


TORCH_BLOCKED = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None          # any `import torch` now raises ImportError
    sys.modules["torchvision"] = None
    from stpm_edge.runtime.doctor import main
    rc = main(sys.argv[2:] + ["--out", sys.argv[1], "-q", "--seconds", "0", "--frames", "2"])
    assert sys.modules["torch"] is None
    print("RC", rc)
    """
)


@pytest.mark.parametrize("with_model", [False, True], ids=["environment", "model"])
def test_runs_without_torch(fake_onnx: Path, tmp_path: Path, with_model: bool) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [str(fake_onnx)] if with_model else []
    done = subprocess.run(
        [sys.executable, "-c", TORCH_BLOCKED, str(tmp_path / "out"), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "RC 0" in done.stdout
    report = json.loads((tmp_path / "out" / "doctor.json").read_text())
    assert report["ok"] is True
    names = [c["name"] for c in report["checks"]]
    assert ("backend ort-cpu" in names) is with_model and (names == []) is not with_model


BUILD_INFO = """
  Video I/O:
    DC1394:                      NO
    FFMPEG:                      YES
      avcodec:                   YES (58.54.100)
    GStreamer:                   YES (1.20.3)
    v4l/v4l2:                    YES (linux/videodev2.h)
"""


def test_parsers() -> None:
    assert doctor.parse_video_io(BUILD_INFO) == {
        "ffmpeg": "YES",
        "gstreamer": "YES (1.20.3)",
        "v4l2": "YES (linux/videodev2.h)",
    }
    line = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64"
    assert doctor.parse_l4t_release(line) == "36.4.3"
    assert doctor.parse_l4t_release("garbage") is None


def test_jetson_info(tmp_path: Path) -> None:
    release, model = tmp_path / "nv_tegra_release", tmp_path / "model"
    assert doctor.jetson_info(release, model) is None  # neither file: not a Jetson
    release.write_text("# R36 (release), REVISION: 3.0, GCID: 1, BOARD: generic\n")
    model.write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    info = doctor.jetson_info(release, model)
    assert info == {"model": "NVIDIA Jetson Orin Nano Developer Kit", "l4t": "36.3.0"}


def test_environment_warnings() -> None:
    env = {
        "onnxruntime": {"distributions": {"onnxruntime": "1.20", "onnxruntime-gpu": "1.20"}},
        "opencv": {"video_io": {"gstreamer": "NO"}},
        "jetson": {"model": "NVIDIA Jetson AGX Orin", "l4t": "36.3.0"},
        "tensorrt": {"version": "8.6.2"},
        "cuda": {"cuda_python": "13.0.1", "driver": "12.6"},
    }
    text = "\n".join(doctor.environment_warnings(env))
    assert "onnxruntime, onnxruntime-gpu" in text
    assert "opencv/opencv-python#524" in text
    assert "older than R36.4" in text
    assert "TensorRT 8.6.2" in text
    assert "cuda-python<13" in text
    clean = {
        "onnxruntime": {"distributions": {"onnxruntime-gpu": "1.20"}},
        "opencv": {"video_io": {"gstreamer": "YES (1.20.3)"}},
        "jetson": {"model": "NVIDIA Jetson AGX Orin", "l4t": "36.4.3"},
        "tensorrt": {"version": "10.3.0"},
        "cuda": {"cuda_python": "12.6.0", "driver": "12.6"},
    }
    assert doctor.environment_warnings(clean) == []
    assert doctor.default_trt_version(clean) == "10.3"
    assert doctor.default_trt_version({"tensorrt": {"version": None}}) == "10.3"
