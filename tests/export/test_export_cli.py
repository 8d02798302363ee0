"""stpm-export as a user runs it: what it prints and writes, and what it refuses to do."""

from __future__ import annotations

import contextlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import onnx
import pytest

from stpm_edge.export.cli import main as export_main


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = export_main(argv)
    return rc, out.getvalue(), err.getvalue()


def run_ort(path: Path, frames: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"image": frames}), strict=True))


@pytest.fixture(scope="module")
def triton_export(best_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    """``stpm-export best.ckpt -o model.onnx --triton repo``: (output dir, rc, stdout, stderr)."""
    out = tmp_path_factory.mktemp("export_cli")
    rc, stdout, stderr = run_main(
        [str(best_ckpt), "-o", str(out / "model.onnx"), "--triton", str(out / "repo")]
    )
    return out, rc, stdout, stderr


def test_prints_io_and_parity(triton_export) -> None:
    out, rc, stdout, stderr = triton_export
    assert rc == 0, stderr
    assert f"wrote {out / 'model.onnx'}" in stdout and "fp32" in stdout
    lines = stdout.splitlines()
    assert any(
        "input" in line and "image" in line and "uint8" in line and "64, 64, 3" in line
        for line in lines
    )
    for name in ("anomaly_map", "score", "score_normalized"):
        assert any(line.split()[:2] == ["output", name] for line in lines), name
    assert any("1, 64, 64" in line for line in lines if "anomaly_map" in line)
    parity = next(line for line in lines if "parity" in line)
    assert "same ranking: True" in parity and "finite: True" in parity
    assert "re-calibrated" in stderr  # the thresholds were fitted to this graph's own scores


def test_writes_a_triton_repository(triton_export) -> None:
    out, rc, _, _ = triton_export
    assert rc == 0
    config = (out / "repo" / "stpm" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 8" in config
    for name in ("image", "anomaly_map", "score", "score_normalized"):
        assert f'"{name}"' in config
    copied = out / "repo" / "stpm" / "1" / "model.onnx"
    assert copied.read_bytes() == (out / "model.onnx").read_bytes()


def test_exporting_twice_gives_the_same_graph(
    triton_export, exported_onnx: Path, real_frames_bgr
) -> None:
    out, rc, _, _ = triton_export
    assert rc == 0
    a, b = run_ort(out / "model.onnx", real_frames_bgr), run_ort(exported_onnx, real_frames_bgr)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert (out / "model.onnx").read_bytes() == exported_onnx.read_bytes()


def test_existing_output_needs_force(exported_onnx: Path, best_ckpt: Path) -> None:
    before = (exported_onnx.read_bytes(), exported_onnx.stat().st_mtime_ns)
    rc, stdout, stderr = run_main([str(best_ckpt), "-o", str(exported_onnx)])
    assert rc == 2 and stdout == ""
    assert stderr.startswith("error: output exists") and "--force" in stderr
    assert (exported_onnx.read_bytes(), exported_onnx.stat().st_mtime_ns) == before


def test_truncated_checkpoint(best_ckpt: Path, tmp_path: Path) -> None:
    data = best_ckpt.read_bytes()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    rc, _, stderr = run_main([str(bad), "-o", str(tmp_path / "out.onnx")])
    assert rc == 2
    assert stderr.startswith("error: cannot read checkpoint") and str(bad) in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out.onnx").exists()


def test_int8_needs_calib(best_ckpt: Path, tmp_path: Path) -> None:
    rc, _, stderr = run_main([str(best_ckpt), "-o", str(tmp_path / "q.onnx"), "--int8"])
    assert rc == 2 and "--calib" in stderr
    assert not (tmp_path / "q.onnx").exists()


def test_output_must_be_onnx(best_ckpt: Path, tmp_path: Path) -> None:
    rc, _, stderr = run_main([str(best_ckpt), "-o", str(tmp_path / "model.pt")])
    assert rc == 2 and ".onnx" in stderr


def test_fp16_and_int8_are_exclusive(best_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(io.StringIO()):
        export_main([str(best_ckpt), "-o", str(tmp_path / "m.onnx"), "--fp16", "--int8"])
    assert info.value.code == 2


def test_bad_batch_profile(best_ckpt: Path, tmp_path: Path) -> None:
    err = io.StringIO()
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(err):
        export_main([str(best_ckpt), "-o", str(tmp_path / "m.onnx"), "--batch-range", "8:1:1"])
    assert info.value.code == 2 and "MIN:OPT:MAX" in err.getvalue()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_engine_without_tensorrt(best_ckpt: Path, tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    rc, _, stderr = run_main([str(best_ckpt), "-o", str(target), "--engine", "-q"])
    assert rc != 0
    [reason] = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "TensorRT" in reason
    assert "Traceback" not in stderr
    graph = onnx.load(target)  # the ONNX is written before the engine step
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["stpm.layout"] == "stacked"  # --layout auto picks stacked for a GPU target
    assert not target.with_suffix(".engine").exists()


def test_help_shows_defaults(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        export_main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in (
        "--opset OPSET ONNX opset (17 or newer) (default: 17)",
        "(default: minmax)",
        "(default: 200)",
        "(default: auto)",
        "(default: bgr)",
        "(default: uint8)",
    ):
        assert fragment in text, fragment


def test_batch_range_travels_to_the_ort_tensorrt_profile(best_ckpt: Path, tmp_path: Path) -> None:
    """--batch-range is written into the graph, where the ORT TensorRT provider reads it."""
    from stpm_edge.runtime.runners.ort import batch_range_from

    out = tmp_path / "model.onnx"
    rc, _, stderr = run_main([str(best_ckpt), "-o", str(out), "--batch-range", "1:4:16"])
    assert rc == 0, stderr
    meta = {p.key: p.value for p in onnx.load(out, load_external_data=False).metadata_props}
    assert batch_range_from(meta, None) == (1, 4, 16)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, "separate"),
        ({"int8": True, "target": "cpu"}, "separate"),
        ({"int8": True, "target": None}, "separate"),
        ({"engine": True}, "stacked"),
        ({"int8": True, "target": "openvino"}, "separate"),
        ({"int8": True, "target": "openvino", "layout": "stacked"}, "stacked"),
        ({"layout": "stacked"}, "stacked"),
    ],
)
def test_layout_auto(flags: dict, expected: str) -> None:
    """auto: stacked for GPU engines, separate on CPUs (ONNX Runtime and OpenVINO INT8)."""
    import argparse

    from stpm_edge.export.cli import _layout

    args = argparse.Namespace(
        **{"layout": "auto", "engine": False, "int8": False, "target": None, **flags}
    )
    assert _layout(args) == expected
