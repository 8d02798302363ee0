"""Exported-graph parity on the benchmark: does a deployment score like the PyTorch evaluation?

Every trained checkpoint of a recipe folder (``stpm_edge.quality``) is exported as the user
exports it (``stpm-export``: FP32, ``--fp16``, ``--int8 --calib`` its category's good training
images) and scored through the torch-free runtime on its category's test split, frames prepared
as a camera's are (``int8_gate.score_split``). Each graph's image and pixel AUROC is set against
the same checkpoint's ``stpm-eval`` figures (``eval/metrics.json``). Issue 10 asks every exported
precision to stay within :data:`IMAGE_AUROC_TOLERANCE` image AUROC of PyTorch.

Layout added to the recipe folder::

    OUT/seed<N>/<category>/export/<precision>.onnx   the exported graphs (kept, re-used)
    OUT/parity.json, OUT/parity.md                   the table
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from stpm_edge.errors import DataError, StpmEdgeError, note

logger = logging.getLogger(__name__)

IMAGE_AUROC_TOLERANCE = 0.005
# stpm-export flags per precision; "{calib}" is the category's good training images
PRECISIONS: dict[str, list[str]] = {
    "fp32": [],
    "fp16": ["--fp16"],
    "int8": ["--int8", "--calib", "{calib}"],
    # NNCF's graph for OpenVINO: score it with --backend openvino
    "int8_openvino": ["--int8", "--target", "openvino", "--calib", "{calib}"],
    # TensorRT's graph: on ort-cpu its Q/DQ pairs run as written, TensorRT's arithmetic
    # (runtime.check_arithmetic)
    "int8_tensorrt": ["--int8", "--target", "tensorrt", "--calib", "{calib}"],
}


def data_root(recipe: Path, seed_dir: str) -> Path:
    """The benchmark a recipe's seed was evaluated on: its own, or its source's for a folder
    made by ``quality colour`` (``derived_from`` in recipe.json)."""
    own = recipe / "data" / seed_dir
    if own.exists():
        return own
    recipe_file = recipe / "recipe.json"
    source = (
        json.loads(recipe_file.read_text()).get("derived_from") if recipe_file.exists() else None
    )
    if source is None:
        raise DataError(
            note(f"no benchmark data for {recipe}/{seed_dir}", "run `quality run` first")
        )
    return data_root(Path(source), seed_dir)


def export_parity(
    recipe: str | Path,
    precisions: Sequence[str] = tuple(PRECISIONS),
    seeds: Sequence[int] | None = None,
    backend: str = "ort-cpu",
    export: Callable[[list[str]], int] | None = None,
) -> dict:
    """Export and score every evaluated checkpoint of ``recipe``; writes parity.json/.md there.

    Returns ``{"rows": [...], "worst": {precision: largest |image AUROC change|}}``.
    """
    recipe = Path(recipe)
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise DataError(note(f"unknown precision(s) {unknown}", f"use {', '.join(PRECISIONS)}"))
    export = export or _export_main()
    rows = []
    for metrics_file in sorted(recipe.glob("seed*/*/eval/metrics.json")):
        folder = metrics_file.parent.parent
        seed = int(folder.parent.name.removeprefix("seed"))
        if seeds is not None and seed not in seeds:
            continue
        rows.append(_category_row(folder, recipe, precisions, backend, export))
    if not rows:
        raise DataError(
            note(f"no evaluated checkpoints under {recipe}", "expected seed<N>/<cat>/eval/")
        )
    result = {"backend": backend, "rows": rows, "worst": _worst(rows, precisions)}
    (recipe / "parity.json").write_text(json.dumps(result, indent=2) + "\n")
    (recipe / "parity.md").write_text(parity_table(result, precisions))
    return result


def _export_main() -> Callable[[list[str]], int]:
    from stpm_edge.export.cli import main

    return main


def _category_row(
    folder: Path, recipe: Path, precisions: Sequence[str], backend: str, export
) -> dict:
    from stpm_edge.data.mvtec import MVTecCategory
    from stpm_edge.export.int8_gate import score_split
    from stpm_edge.metrics import auroc

    category, seed_dir = folder.name, folder.parent.name
    data = data_root(recipe, seed_dir)
    reference = json.loads((folder / "eval" / "metrics.json").read_text())
    samples = MVTecCategory(data, category).test()
    row = {
        "category": category,
        "seed": int(seed_dir.removeprefix("seed")),
        "images": len(samples),
        "pytorch": {k: reference[k] for k in ("image_auroc", "pixel_auroc")},
    }
    for precision in precisions:
        graph = _exported(folder, data / category / "train" / "good", precision, export)
        labels, scores, masks, maps = score_split(graph, samples, backend)
        image, pixel = auroc(labels, scores), auroc(masks.ravel(), maps.ravel())
        row[precision] = {
            "image_auroc": image,
            "pixel_auroc": pixel,
            "image_change": image - reference["image_auroc"],
            "pixel_change": pixel - reference["pixel_auroc"],
        }
        logger.info(
            "%s/%s %s: image AUROC %.4f (PyTorch %.4f)",
            seed_dir, category, precision, image, reference["image_auroc"],
        )  # fmt: skip
    return row


def _exported(folder: Path, calib: Path, precision: str, export) -> Path:
    """``folder``/export/``precision``.onnx, exported unless it is there already."""
    graph = folder / "export" / f"{precision}.onnx"
    if graph.exists():
        return graph
    graph.parent.mkdir(parents=True, exist_ok=True)
    flags = [f.format(calib=calib) for f in PRECISIONS[precision]]
    argv = [str(folder / "train" / "best.ckpt"), "-o", str(graph), "-q", *flags]
    code = export(argv)
    if code != 0:
        raise StpmEdgeError(note(f"stpm-export failed (exit {code})", f"arguments: {argv}"))
    return graph


def _worst(rows: list[dict], precisions: Sequence[str]) -> dict[str, float]:
    return {p: max(abs(r[p]["image_change"]) for r in rows) for p in precisions}


def parity_table(result: dict, precisions: Sequence[str]) -> str:
    """Markdown: PyTorch image AUROC and each precision's change, per (seed, category)."""
    head = " | ".join(f"{p} image (change)" for p in precisions)
    lines = [
        f"| seed | category | PyTorch image AUROC | {head} |",
        "|---|---|---|" + "---|" * len(precisions),
    ]
    for r in result["rows"]:
        cells = " | ".join(
            f"{r[p]['image_auroc']:.4f} ({r[p]['image_change']:+.4f})" for p in precisions
        )
        lines.append(
            f"| {r['seed']} | {r['category']} | {r['pytorch']['image_auroc']:.4f} | {cells} |"
        )
    worst = ", ".join(f"{p} {v:.4f}" for p, v in result["worst"].items() if not math.isnan(v))
    lines.append(
        f"\nLargest |image AUROC change| ({result['backend']}): {worst}; "
        f"tolerance {IMAGE_AUROC_TOLERANCE}.\n"
    )
    return "\n".join(lines) + "\n"
