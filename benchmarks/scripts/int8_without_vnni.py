"""Do INT8 graphs score the same on an x86 CPU without VNNI? Natively and on an emulated Haswell.

x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) add pairs of u8 x s8 products in int16
and saturate above 32767, which 8-bit weights reach (``stpm_edge.export.int8.PAIR_SAFE_WEIGHT``).
This script scores a recipe folder's exported graphs on each checkpoint's test split twice: on
this host and under QEMU's user-mode emulator with ``-cpu Haswell`` (AVX2, no VNNI; ONNX Runtime
and OpenVINO pick their kernels from the emulated CPUID). Both are set against the checkpoint's
PyTorch evaluation (``eval/metrics.json``). The emulation runs about 30x slower (about 5 minutes
per 110-image category on one core), hence a few checkpoints, not all.

    python benchmarks/scripts/int8_without_vnni.py /work/quality_runs/defaults_v0_local_gate90 \\
        --graph int8.onnx --pairs 0/brick 0/gear --out runs/int8_without_vnni

Needs ``qemu-x86_64`` (Debian: ``apt-get install qemu-user``) and a host with VNNI for the
comparison to mean anything (on an AVX2 host both columns saturate alike).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from stpm_edge.data.mvtec import MVTecCategory
from stpm_edge.errors import DataError, note
from stpm_edge.metrics import auroc
from stpm_edge.quality_parity import data_root

EMULATED_CPU = "Haswell"


def score(recipe: Path, pair: str, graph: str, backend: str) -> dict:
    """Image and pixel AUROC of ``seedS/CATEGORY/export/GRAPH`` on the category's test split."""
    from stpm_edge.export.int8_gate import score_split

    seed, category = pair.split("/")
    folder = recipe / f"seed{seed}" / category
    samples = MVTecCategory(data_root(recipe, f"seed{seed}"), category).test()
    labels, scores, masks, maps = score_split(folder / "export" / graph, samples, backend, 1)
    return {"image_auroc": auroc(labels, scores), "pixel_auroc": auroc(masks.ravel(), maps.ravel())}


def score_emulated(args: argparse.Namespace, pair: str) -> dict:
    """:func:`score` in a child process on QEMU's emulated CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "score.json"
        cmd = ["qemu-x86_64", "-cpu", EMULATED_CPU, sys.executable, __file__, str(args.recipe)]
        cmd += ["--graph", args.graph, "--backend", args.backend, "--pairs", pair]
        subprocess.run([*cmd, "--score-to", str(out)], check=True, stderr=subprocess.DEVNULL)
        return json.loads(out.read_text())


def row(args: argparse.Namespace, pair: str) -> dict:
    seed, category = pair.split("/")
    folder = args.recipe / f"seed{seed}" / category
    reference = json.loads((folder / "eval" / "metrics.json").read_text())
    result = {"seed": int(seed), "category": category}
    for where, scored in (
        ("host", score(args.recipe, pair, args.graph, args.backend)),
        ("haswell", score_emulated(args, pair)),
    ):
        result[where] = {
            **scored,
            "image_change": scored["image_auroc"] - reference["image_auroc"],
            "pixel_change": scored["pixel_auroc"] - reference["pixel_auroc"],
        }
    print(json.dumps(result), flush=True)
    return result


def table(rows: list[dict], command: str) -> str:
    lines = [
        f"Made by `{command}`\n",
        "| seed | category | image change: host | image change: Haswell (no VNNI) | "
        "pixel change: host | pixel change: Haswell |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        h, e = r["host"], r["haswell"]
        lines.append(
            f"| {r['seed']} | {r['category']} | {h['image_change']:+.4f} | "
            f"{e['image_change']:+.4f} | {h['pixel_change']:+.4f} | {e['pixel_change']:+.4f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe", type=Path, help="recipe folder (seedN/CATEGORY/export/GRAPH)")
    parser.add_argument("--graph", default="int8.onnx", help="graph file name under export/")
    parser.add_argument("--backend", default="ort-cpu", help="ort-cpu or openvino")
    parser.add_argument("--pairs", nargs="+", required=True, help="SEED/CATEGORY, e.g. 0/brick")
    parser.add_argument("--out", type=Path, help="folder for report.md and report.json")
    parser.add_argument("--score-to", type=Path, help=argparse.SUPPRESS)  # the emulated child
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.score_to is not None:
        (pair,) = args.pairs
        args.score_to.write_text(json.dumps(score(args.recipe, pair, args.graph, args.backend)))
        return 0
    if shutil.which("qemu-x86_64") is None:
        raise DataError(note("qemu-x86_64 not found", "apt-get install qemu-user"))
    if args.out is None:
        raise DataError(note("--out is missing", "give a folder for report.md and report.json"))
    rows = [row(args, pair) for pair in args.pairs]
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "benchmarks/scripts/int8_without_vnni.py", *sys.argv[1:]])
    (args.out / "report.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    (args.out / "report.md").write_text(table(rows, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
