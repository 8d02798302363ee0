"""stpm-export: checkpoint -> one fused ONNX graph (FP32 / FP16 / INT8) [-> TensorRT engine, Triton]."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stpm_edge.cli.args import (
    DeprecatedAlias,
    add_config_args,
    add_logging_args,
    add_output_args,
)
from stpm_edge.cli.common import HelpFormatter, run_cli
from stpm_edge.errors import ConfigError, OutputExistsError, note

logger = logging.getLogger(__name__)

PARITY_FRAMES = 16

DESCRIPTION = """Export a trained STPM checkpoint as ONE ONNX graph: pre-processing, teacher, student,
anomaly map and scores, run by a single session.run.

  input   image             uint8 (N,H,W,3) in --color-order  (or float32 (N,3,H,W), --input float)
  outputs anomaly_map       float32 (N,1,H,W)
          score             float32 (N,)   raw: mean of the map's top 1 % (default) or its max,
                                           as trained (metadata stpm.score_reduction)
          score_normalized  float32 (N,)   calibrated: >= 0.5 means NG

Precision (choose one): FP32 (default) | --fp16 (backbones in fp16; normalisation, distances,
upsampling, product and score stay fp32 behind explicit Casts) | --int8 --calib DIR (static QDQ
quantisation of the backbones' convolutions).

examples:
  stpm-export runs/brick/best.ckpt -o brick.onnx
  stpm-export runs/brick/best.ckpt -o brick_fp16.onnx --fp16
  stpm-export runs/brick/best.ckpt -o brick_int8.onnx --int8 --calib data/demo/brick/train/good
  stpm-export runs/brick/best.ckpt -o brick_int8_trt.onnx --int8 --target tensorrt --calib DIR
  stpm-export --check-trt brick.onnx --trt-version 10.3   # TensorRT's parser limits, no GPU
  stpm-export runs/brick/best.ckpt -o brick.onnx --fp16 --engine --batch-range 1:1:8 --triton triton_repo
"""


@dataclass
class ExportResult:
    onnx_path: Path
    precision: str
    parity: dict
    engine_path: Path | None = None
    triton_dir: Path | None = None


def parse_batch(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.replace(",", ":").split(":"))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = (1, values[0], values[0])
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise argparse.ArgumentTypeError(
            f"--batch-range {text!r}: expected MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, e.g. 1:1:8"
        )
    return values  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stpm-export", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    # checkpoint and -o are required unless --check-trt (checked in _check_args)
    p.add_argument(
        "checkpoint", type=Path, nargs="?", help="checkpoint from stpm-train (RUN_DIR/best.ckpt)"
    )
    add_output_args(p, "-o", "--output", help="ONNX file to write (required)")
    g = p.add_argument_group("graph")
    g.add_argument(
        "--input",
        choices=["uint8", "float"],
        default="uint8",
        help="uint8: camera frames (N,H,W,3), normalisation inside the graph; float: (N,3,H,W) normalised RGB",
    )
    g.add_argument(
        "--color-order",
        choices=["bgr", "rgb"],
        default="bgr",
        help="channel order of uint8 frames (OpenCV and GStreamer appsinks give BGR)",
    )
    g.add_argument(
        "--layout",
        choices=["auto", "separate", "stacked"],
        default="auto",
        help="stacked: teacher+student as one network of grouped convolutions (one kernel per layer); "
        "auto: stacked for GPU targets (--engine), separate on CPUs (ONNX Runtime, OpenVINO)",
    )
    g.add_argument(
        "--per-scale-maps", action="store_true", help="also output scale_map_0..2 (diagnosis)"
    )
    g.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    q = p.add_argument_group("precision")
    prec = q.add_mutually_exclusive_group()
    prec.add_argument(
        "--fp16", action="store_true", help="float16 backbones, float32 tail (explicit Casts)"
    )
    prec.add_argument(
        "--int8", action="store_true", help="INT8 static quantisation (needs --calib)"
    )
    q.add_argument(
        "--calib", type=Path, help="folder of good images: INT8 calibration and parity checks"
    )
    q.add_argument(
        "--calib-limit", type=int, default=200, help="at most this many calibration images"
    )
    q.add_argument(
        "--calib-method",
        choices=["minmax", "entropy", "percentile"],
        default="minmax",
        help="INT8 activation-range estimator: minmax (the full range seen), percentile "
        "(99.999 %%), entropy (KL-optimal clipping on a 2048-bin histogram; adds about 2 min)",
    )
    q.add_argument(
        "--gate",
        type=Path,
        metavar="DATA_ROOT",
        help="INT8 accuracy gate: fail unless image/pixel AUROC on DATA_ROOT/--gate-category's "
        "labelled test split stay within 0.005/0.002 of the fp32 graph's",
    )
    q.add_argument("--gate-category", metavar="CAT", help="category folder for --gate")
    t = p.add_argument_group("TensorRT engine (build on the device that will run it)")
    t.add_argument(
        "--engine",
        action="store_true",
        help="also build a serialized TensorRT engine beside the ONNX",
    )
    t.add_argument(
        "--batch-range",
        type=parse_batch,
        default=(1, 1, 8),
        metavar="MIN:OPT:MAX",
        help="dynamic-batch optimisation profile of the engine",
    )
    # the old spelling; "--batch" now means the batch fed to the model (stpm-camera, stpm-bench)
    t.add_argument(
        "--batch", action=DeprecatedAlias, dest="batch_range", new_flag="--batch-range",
        type=parse_batch, metavar="MIN:OPT:MAX",
    )  # fmt: skip
    t.add_argument(
        "--workspace-mb", type=int, default=1024, help="TensorRT builder workspace limit"
    )
    t.add_argument(
        "--timing-cache",
        type=Path,
        help="TensorRT timing cache file (read if present, then updated)",
    )
    _add_target_args(p)
    _add_threshold_args(p)
    s = p.add_argument_group("serving")
    s.add_argument(
        "--triton", type=Path, metavar="REPO_DIR", help="also write a Triton model repository"
    )
    s.add_argument("--max-batch-size", type=int, default=8, help="Triton max_batch_size")
    s.add_argument(
        "--triton-trt",
        action="store_true",
        help="Triton runs the ONNX with ONNX Runtime's TensorRT provider (engine cache, batch "
        "profile 1..--max-batch-size); a .plan from --engine must be built with the container's "
        "TensorRT instead",
    )
    add_config_args(p)
    add_logging_args(p)
    return p


def _add_target_args(p: argparse.ArgumentParser) -> None:
    """The export target and the TensorRT compatibility check (one block: H1)."""
    c = p.add_argument_group("target and TensorRT compatibility check")
    c.add_argument(
        "--target",
        choices=("cpu", "tensorrt", "openvino"),
        help="runtime the graph is for: INT8 recipe (cpu: U8S8 for ONNX Runtime; tensorrt: "
        "symmetric INT8; openvino: NNCF) and a TensorRT check failure is an error for tensorrt; "
        "default: tensorrt with --engine, else cpu (recorded in the metadata)",
    )
    c.add_argument(
        "--check-trt",
        type=Path,
        metavar="MODEL.onnx",
        help="only check an existing ONNX file against TensorRT's documented ONNX-parser limits "
        "(exit 2 on any violation); no checkpoint needed",
    )
    c.add_argument(
        "--trt-version",
        default="10.3",
        help="TensorRT whose parser limits are checked: 10.3 (JetPack 6), 10.x or 11",
    )


def _add_threshold_args(p: argparse.ArgumentParser) -> None:
    """Hand-set thresholds (the calibration service's "manual" source: H4)."""
    c = p.add_argument_group(
        "thresholds (default: the checkpoint's, re-fitted to this precision by their source: "
        "validation images, or the labelled images of stpm-eval --save-calibrated)"
    )
    c.add_argument(
        "--threshold",
        type=float,
        metavar="SCORE",
        help="image threshold in raw score units, set by hand and written as is (source "
        "'manual'; never re-fitted, so check it against this precision's scores)",
    )
    c.add_argument(
        "--pixel-threshold",
        type=float,
        metavar="SCORE",
        help="with --threshold: the defect-region threshold (default: the checkpoint's "
        "pixel/image ratio applied to --threshold)",
    )


def _target(args: argparse.Namespace) -> str:
    return args.target or ("tensorrt" if args.engine else "cpu")


def _layout(args: argparse.Namespace) -> str:
    """``--layout auto``: stacked (one grouped convolution per layer for both networks) for GPU
    engines (half the kernel launches); separate on CPUs. For OpenVINO INT8 the two layouts ran
    within the host's noise of each other (benchmarks/reports/cpu-epyc-2core/
    peers_anomalib_resnet18: separate 10.16 vs stacked 10.93 ms mean), and NNCF's bias correction
    reaches every layer only in the separate graph (resnet18: 30 of 30 layers vs 1; its export
    parity: score error 0.8 % vs 2.4 %)."""
    if args.layout != "auto":
        return args.layout
    return "stacked" if args.engine else "separate"


def _precision(args: argparse.Namespace) -> str:
    return "fp16" if args.fp16 else "int8" if args.int8 else "fp32"


def _check_args(args: argparse.Namespace) -> None:
    if args.checkpoint is None or args.output is None:
        raise ConfigError(
            note(
                "stpm-export needs a checkpoint and -o OUTPUT.onnx",
                "e.g. stpm-export runs/brick/best.ckpt -o brick.onnx "
                "(or --check-trt MODEL.onnx to check a file)",
            )
        )
    if args.gate is not None and (not args.int8 or not args.gate_category):
        raise ConfigError(
            note("--gate checks an INT8 export", "use it with --int8 and --gate-category CAT")
        )
    if args.int8 and args.calib is None:
        raise ConfigError(
            note(
                "--int8 needs calibration images",
                "add --calib DIR (a folder of good images, e.g. train/good)",
            )
        )
    if args.output.suffix.lower() != ".onnx":
        raise ConfigError(
            note(f"-o {args.output}: the output must be an .onnx file", "e.g. -o model.onnx")
        )
    targets = [args.output] + ([args.output.with_suffix(".engine")] if args.engine else [])
    if args.triton is not None:
        targets.append(args.triton / "stpm")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.force:
        raise OutputExistsError(
            note(
                f"output exists: {', '.join(existing)}",
                "nothing was written; pass --force to overwrite",
            )
        )
    if args.pixel_threshold is not None and args.threshold is None:
        raise ConfigError(
            note("--pixel-threshold needs --threshold", "give both, e.g. --threshold 0.02")
        )


def _calibration_rgb(args: argparse.Namespace, size: int):
    """Good images from --calib (else hard synthetic ones) as RGB uint8 (N, S, S, 3)."""
    from stpm_edge.runtime import image

    if args.calib is None:
        return image.swap_rb(np.stack(image.synthetic_frames(8, size, size, extremes=True)))
    if not args.calib.is_dir():
        raise ConfigError(
            note(f"--calib {args.calib} is not a folder", "give a folder of good images")
        )
    paths = image.list_images(args.calib)[: args.calib_limit]
    if not paths:
        raise ConfigError(
            note(f"--calib {args.calib} holds no images", "give a folder of good .png/.jpg images")
        )
    return load_rgb(paths, size)


def load_rgb(paths, size: int):
    """Images read and resized exactly as in training: RGB uint8 (N, S, S, 3)."""
    from stpm_edge.runtime import image

    return np.stack([image.resize_image(image.read_image(p), size) for p in paths])


def graph_feed(rgb, options, config):
    """RGB uint8 (N, S, S, 3) -> the graph's ``image`` input: uint8 NHWC in its colour order, or
    normalised float32 NCHW. The image module's conversion, as the runtime's ``prepare_batch``."""
    from stpm_edge.runtime.image import to_model_input

    return to_model_input(
        rgb,
        config.image_size,
        options.input_format,
        options.color_order,
        config.mean,
        config.std,
        order="RGB",
    )


def graph_options(model, precision: str, layout: str, target: str, rgb, **given):
    """The ``GraphOptions`` an export of ``precision`` (fp32/fp16/int8) for ``target`` builds:
    ``given`` (input format, colour order, ...) plus what INT8 decides itself — integer stems on
    the CPU targets (``int8.wants_integer_stem``), and in the stacked layout the student's streams
    at the teacher's ranges, measured on ``rgb`` (good RGB uint8 images;
    ``stream_ranges.student_stream_scales``)."""
    from stpm_edge.export import graph as G
    from stpm_edge.export.int8 import wants_integer_stem
    from stpm_edge.export.stream_ranges import student_stream_scales

    int8 = precision == "int8"
    return G.GraphOptions(
        layout=layout,
        precision="fp16" if precision == "fp16" else "fp32",
        integer_stem=int8
        and given.get("input_format", "uint8_nhwc") == "uint8_nhwc"
        and wants_integer_stem(model.config.backbone, target),
        student_stream_scales=student_stream_scales(model, rgb)
        if int8 and layout == "stacked"
        else (),
        **given,
    )


def export_checkpoint(args: argparse.Namespace) -> ExportResult:
    """What ``stpm-export`` does, as a function of its parsed arguments."""
    import onnx

    from stpm_edge.checkpoint import load_checkpoint, model_from_payload
    from stpm_edge.export import graph as G

    _check_args(args)
    precision = _precision(args)
    payload = load_checkpoint(args.checkpoint)
    model = model_from_payload(payload, str(args.checkpoint))
    layout = _layout(args)
    target = _target(args)
    rgb = _calibration_rgb(args, model.config.image_size)
    options = graph_options(
        model,
        precision,
        layout,
        target,
        rgb,
        input_format="uint8_nhwc" if args.input == "uint8" else "float32_nchw",
        color_order=args.color_order.upper(),
        per_scale_maps=args.per_scale_maps,
        opset=args.opset,
    )
    sha = G.fingerprint(args.checkpoint)
    graph = G.build_graph(model, payload["calibration"], options, sha)
    frames = graph_feed(rgb, options, model.config)
    fp32_graph = graph if args.gate is not None else None
    if precision == "int8":
        from stpm_edge.export.int8 import quantize_int8

        graph = quantize_int8(
            graph, frames, method=args.calib_method, progress=not args.quiet, target=target
        )
        metadata = G.build_metadata(
            model, payload["calibration"], options, sha, precision="int8", int8_target=target
        )
        G.set_metadata(graph, metadata)
        G.check(graph, "int8 export")
    # the batch range travels in the graph: ONNX Runtime's TensorRT provider builds its engine
    # profile from it (runtime/runners/ort.py), so a new batch size never rebuilds the engine
    batch_range = json.dumps(list(args.batch_range))
    G.set_metadata(
        graph, G.read_metadata(graph) | {"stpm.target": target, "stpm.batch_range": batch_range}
    )
    if precision != "fp32":
        _refit_baseline(graph, payload, model.config, options, precision)
    _recalibrate(graph, payload, model.config, options, args)
    if fp32_graph is not None:  # --gate: the measured AUROC loss decides before any write
        from stpm_edge.export.int8_gate import gate_graphs, require_gate

        gate = gate_graphs(fp32_graph, graph, args.gate, args.gate_category, target)
        require_gate(gate)
        # the file carries its passed gate: stpm-bench --recommend names it beside the pick
        record = {**gate.as_dict(), "category": args.gate_category}
        G.set_metadata(graph, G.read_metadata(graph) | {"stpm.int8_gate": json.dumps(record)})
    # parity on a bounded sample: calibration may hold hundreds of frames, the check needs few
    report = _parity(
        graph, model, payload["calibration"], options, frames[:PARITY_FRAMES], precision
    )
    _trt_check(graph, args, target, precision)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, args.output)
    result = ExportResult(args.output, precision, report.as_dict())
    if args.triton is not None or args.engine:
        _downstream(args, result)
    return result


def _trt_check(graph, args: argparse.Namespace, target: str, precision: str) -> None:
    """TensorRT's documented parser limits on every export: an error when the graph is for
    TensorRT (--engine or --target tensorrt), a warning otherwise."""
    from stpm_edge.export.trt_check import check_model, require_trt_compatible

    what = f"{precision} export for target {target}"
    if args.engine or target == "tensorrt":
        require_trt_compatible(graph, args.trt_version, what)
        return
    violations = check_model(graph, args.trt_version)
    if violations:
        logger.warning(
            "%s: not for TensorRT (%d parser-limit violations, e.g. %s: %s); export with "
            "--target tensorrt for a TensorRT graph",
            what,
            len(violations),
            violations[0].node,
            violations[0].rule,
        )


def check_trt_file(path: Path, trt_version: str) -> int:
    """``stpm-export --check-trt MODEL.onnx``: print the violations; 0 if none, else 2."""
    from stpm_edge.export.trt_check import check_model, format_violations

    violations = check_model(path, trt_version)
    if not violations:
        print(f"{path}: no documented TensorRT {trt_version} ONNX-parser limit violated")
        return 0
    print(f"{path}: {len(violations)} TensorRT {trt_version} ONNX-parser violation(s):")
    print(format_violations(violations))
    return 2


def _refit_baseline(graph, payload: dict, config, options, precision: str) -> None:
    """An FP16/INT8 graph's score baseline refitted on its own map over the checkpoint's training
    images (``export.graph_baseline``); when they are gone, PyTorch's is kept and a warning says so.
    The metadata says which it is (``stpm.score_baseline``: ``fitted_on``)."""
    from stpm_edge.errors import DataError
    from stpm_edge.export import graph as G
    from stpm_edge.export import graph_baseline
    from stpm_edge.tune import original_train

    if not graph_baseline.has_baseline(graph):
        return
    entry = json.loads(G.read_metadata(graph)["stpm.score_baseline"])
    try:
        paths = [s.path for s in original_train(payload)]
    except DataError as exc:
        logger.warning(
            "%s: the %s graph keeps PyTorch's score baseline (refit it where the training "
            "images are)",
            str(exc).split("\n")[0],
            precision,
        )
        entry["fitted_on"] = "pytorch fp32"
    else:
        values = graph_baseline.refit(
            graph, graph_feed(load_rgb(paths, config.image_size), options, config)
        )
        entry.update(
            fitted_on=f"this {precision} graph", mean=float(values.mean()), min=float(values.min())
        )
    G.set_metadata(graph, G.read_metadata(graph) | {"stpm.score_baseline": json.dumps(entry)})


def _recalibrate(graph, payload: dict, config, options, args: argparse.Namespace) -> None:
    """Write the thresholds THIS graph must use (the calibration service, DESIGN.md §4).

    FP16 and INT8 shift raw scores (INT8 by up to tens of percent), so the checkpoint's
    thresholds are re-fitted on this graph's scores by their source: the validation images, or
    the labelled images stored by ``stpm-eval --save-calibrated``; a hand-set threshold
    (``--threshold`` or a "manual" checkpoint) is written as is. When the images are gone the
    checkpoint's thresholds are kept and a warning says so.
    """
    from stpm_edge import calibration as C
    from stpm_edge.export import graph as G
    from stpm_edge.export.parity import run_onnx

    precision = G.read_metadata(graph).get("stpm.precision", options.precision)
    if args.threshold is not None:
        calibration = C.calibrate_manual(
            args.threshold, args.pixel_threshold, base=payload["calibration"]
        )
        if precision != "fp32":
            logger.warning(
                "--threshold %.4g written as is into the %s graph: its raw scores differ "
                "slightly from fp32 (see the parity line); check the verdicts",
                args.threshold,
                precision,
            )
    else:

        def score(paths: list[Path]):
            out = run_onnx(graph, graph_feed(load_rgb(paths, config.image_size), options, config))
            return out["score"], out["anomaly_map"][:, 0]

        calibration = C.recalibrate(payload, score, f"the {precision} graph")
    G.apply_calibration(graph, calibration)


def _parity(graph, model, calibration, options, frames, precision):
    from dataclasses import replace

    from stpm_edge import anomaly_map as am
    from stpm_edge.export import graph as G
    from stpm_edge.export import parity

    reference = G.FusedSTPM(
        model, calibration, replace(options, precision="fp32", per_scale_maps=False)
    ).eval()
    score_range = am.calibration_scale(calibration)
    report = parity.compare(
        parity.run_torch(reference, frames), parity.run_onnx(graph, frames), precision, score_range
    )
    parity.require(report)
    logger.info("parity vs PyTorch: %s", report.summary())
    return report


def _downstream(args: argparse.Namespace, result: ExportResult) -> None:
    """The TensorRT engine and the Triton repository, both from the ONNX just written."""
    if args.engine:
        from stpm_edge.export.trt_build import build_engine

        info = build_engine(
            args.output,
            args.output.with_suffix(".engine"),
            batch=args.batch_range,
            workspace_mb=args.workspace_mb,
            timing_cache=args.timing_cache,
            force=args.force,
        )
        result.engine_path = Path(info.engine_path)
    if args.triton is not None:
        from stpm_edge.export.triton import write_triton_repository

        result.triton_dir = write_triton_repository(
            args.triton,
            args.output,
            engine_path=result.engine_path,
            max_batch_size=args.max_batch_size,
            force=args.force,
            tensorrt_accelerator=getattr(args, "triton_trt", False),
        )


def describe(result: ExportResult) -> str:
    """What was written: I/O, precision, size, parity — printed by the CLI."""
    import onnx

    model = onnx.load(result.onnx_path, load_external_data=False)
    lines = [
        f"wrote {result.onnx_path} ({result.onnx_path.stat().st_size / 2**20:.2f} MiB, {result.precision}, "
        f"opset {model.opset_import[0].version})"
    ]
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for v in values:
            dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
            lines.append(f"  {kind:6s} {v.name:18s} {str(dtype):8s} ({', '.join(map(str, dims))})")
    from stpm_edge.runtime.metadata import props

    meta = props(model)
    lines.append(
        f"  layout {meta.get('stpm.layout')}, colour order {meta.get('stpm.color_order')}, "
        f"image threshold {float(meta['stpm.image_threshold']):.4g}"
    )
    p = result.parity
    lines.append(
        f"  parity vs PyTorch fp32 on {p['frames']} frames: max map error {p['max_rel_map_error']:.2e} of peak, "
        f"score error {p['score_error_of_range']:.2e} of the calibrated range, same ranking: {p['same_score_ranking']}, finite: {p['finite']}"
    )
    if result.engine_path:
        lines.append(f"wrote {result.engine_path}")
    if result.triton_dir:
        lines.append(f"wrote Triton model {result.triton_dir}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    if args.check_trt is not None:
        return check_trt_file(args.check_trt, args.trt_version)
    result = export_checkpoint(args)
    print(describe(result))
    if args.verbose:
        print(json.dumps(result.parity, indent=2), file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_run, build_parser(), argv)  # a missing torch/onnx is caught by run_cli


if __name__ == "__main__":
    raise SystemExit(main())
