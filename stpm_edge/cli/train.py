"""stpm-train: train STPM on good images (MVTec AD layout or a plain folder)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from stpm_edge.choices import AMP_CHOICES, COLOUR_MODES, HOST_MEMORY_CHOICES
from stpm_edge.cli.args import (
    add_colour_gate_args,
    add_config_args,
    add_logging_args,
    add_output_args,
)
from stpm_edge.cli.common import HelpFormatter, run_cli

DESCRIPTION = """Train the STPM student against a frozen pretrained teacher on good images only.

Writes RUN_DIR/best.ckpt (best by --val-criterion, calibrated), RUN_DIR/last.ckpt (for --resume),
RUN_DIR/config.yaml (the effective settings), RUN_DIR/train_log.jsonl (one line per epoch) and
RUN_DIR/train_summary.json (steps, epochs, images seen, the recipe, the chosen epoch).
Defaults are the paper's recipe; any flag can also come from --config FILE.yaml (flags win).

example:
  stpm-train --data data/demo --category brick --backbone efficientnet_lite0 --epochs 20 --out runs/brick
"""


def build_parser() -> argparse.ArgumentParser:
    from stpm_edge.train import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="stpm-train", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    add_config_args(p, merge=False)  # TrainConfig.from_sources reads it (flags win)
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        help="dataset root (MVTec AD layout) or a folder of good images (then no --category)",
    )
    g.add_argument("--category", help=f"MVTec category folder under --data (default: {d.category})")
    g.add_argument(
        "--val-fraction",
        type=float,
        help=f"share of train/good held out for validation (default: {d.val_fraction})",
    )
    g.add_argument(
        "--max-train-images", type=int, help="use at most this many training images (default: all)"
    )
    g.add_argument(
        "--skip-bad",
        action="store_const",
        const=True,
        help="skip unreadable images with a warning and a count, instead of stopping (default: stop)",
    )
    g.add_argument(
        "--augment",
        metavar="{none,texture,object}",
        help="training augmentation by category kind: 'texture' (flips, 90-degree turns, "
        "crop-resize), 'object' (brightness/contrast within 8 %%, shift of 3 px per 256); "
        f"turns the teacher-feature cache off (default: {d.augment})",
    )
    g.add_argument(
        "--augment-jpeg",
        type=float,
        metavar="P",
        help="with any --augment: each training image, with probability P, as a JPEG of quality "
        "70-95 (for lines whose frames are compressed: MJPG cameras, RTSP streams); turns the "
        f"teacher-feature cache off when above 0 (default: {d.augment_jpeg})",
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--backbone",
        help=f"teacher/student architecture, see stpm-train --list-backbones (default: {d.backbone})",
    )
    m.add_argument(
        "--list-backbones", action="store_true", help="print the registered backbones and exit"
    )
    m.add_argument(
        "--image-size",
        type=int,
        help=f"square input size, a multiple of 16 (default: {d.image_size})",
    )
    m.add_argument(
        "--teacher-weights",
        help="'pretrained' (the backbone's ImageNet weights), a state-dict FILE, "
        f"or 'random' (plumbing tests only) (default: {d.teacher_weights})",
    )
    m.add_argument(
        "--blur-sigma",
        type=float,
        help=f"Gaussian blur of the map in pixels, 0 = off (default: {d.blur_sigma})",
    )
    m.add_argument(
        "--score-reduction",
        choices=["max", "topk"],
        help=f"image score from the map (default: {d.score_reduction})",
    )
    m.add_argument(
        "--topk-fraction",
        type=float,
        help=f"share of pixels averaged by --score-reduction topk (default: {d.topk_fraction})",
    )
    m.add_argument(
        "--map-resolution",
        choices=["feature", "input"],
        help="grid the scales are combined, blurred and scored on: 'feature' (stride 4, "
        "upsampled once for the output map) or 'input' (the paper's) "
        f"(default: {d.map_resolution})",
    )
    m.add_argument(
        "--colour-map",
        choices=["auto", "off", *COLOUR_MODES],
        help="colour map for stains STPM cannot see, fitted after training on the same images: "
        "'local' (each cell against the nearest training colour within one cell), 'aligned' (a "
        "Gaussian per cell) or 'texture' (one Gaussian for every cell); 'auto': local when "
        "--image-size is a multiple of 64, else off; stpm-colour adds it to older runs "
        f"(default: {d.colour_map})",
    )
    add_colour_gate_args(p, default=None)
    m.add_argument(
        "--score-baseline",
        action=argparse.BooleanOptionalAction,
        help="score each image above the largest map value the training images reach at each "
        "position (the map's fixed pattern: borders, component edges), fitted after training; "
        f"stpm-baseline adds it to older runs (default: {'on' if d.score_baseline else 'off'})",
    )
    o = p.add_argument_group("optimisation")
    o.add_argument(
        "--epochs", type=int, help=f"whole passes over the training images (default: {d.epochs})"
    )
    o.add_argument(
        "--steps",
        type=int,
        help="train for N SGD steps instead of --epochs (not both): ceil(N / steps per epoch) "
        "epochs, the last one possibly partial (default: --epochs decides)",
    )
    o.add_argument("--batch-size", type=int, help=f"(default: {d.batch_size})")
    o.add_argument("--lr", type=float, help=f"SGD learning rate (default: {d.lr})")
    o.add_argument(
        "--lr-schedule",
        metavar="{constant,cosine}",
        help="learning rate per SGD step: 'constant' (--lr throughout) or 'cosine' (from --lr "
        f"down to 0 over the run) (default: {d.lr_schedule})",
    )
    o.add_argument(
        "--loss-scale",
        metavar="{paper,official}",
        help="'paper': 0.5 x squared distance of the normalised features; 'official': the STFPM "
        f"code's, without the 0.5 (twice the gradient at the same --lr) (default: {d.loss_scale})",
    )
    o.add_argument(
        "--val-criterion",
        metavar="{loss,map_mean}",
        help="best.ckpt = the epoch with the lowest 'loss' (validation loss) or 'map_mean' (mean "
        f"anomaly map over the validation images, the STFPM code's) (default: {d.val_criterion})",
    )
    o.add_argument("--momentum", type=float, help=f"SGD momentum (default: {d.momentum})")
    o.add_argument("--weight-decay", type=float, help=f"(default: {d.weight_decay})")
    o.add_argument(
        "--seed",
        type=int,
        help=f"seeds the split, the student's init and the shuffles (default: {d.seed})",
    )
    o.add_argument("--device", help=f"'auto', 'cpu' or 'cuda[:N]' (default: {d.device})")
    o.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        help="mixed precision of the student's step: 'auto' = fp16 on CUDA, float32 on a CPU; "
        f"'bf16' on CUDA or on CPUs with native bf16 (AVX-512 BF16, AMX) (default: {d.amp})",
    )
    o.add_argument(
        "--no-amp", dest="amp", action="store_const", const="off", help="the same as --amp off"
    )
    o.add_argument(
        "--host-memory",
        choices=HOST_MEMORY_CHOICES,
        help="'retain': freed tensors stay in the process for the next step instead of going back "
        "to the system and being page-faulted in again (glibc; the same numbers, a faster CPU "
        "step, the peak memory kept until exit); 'system': the C library's own behaviour "
        f"(default: {d.host_memory})",
    )
    o.add_argument(
        "--workers", type=int, help=f"data-loader worker processes (default: {d.workers})"
    )
    r = p.add_argument_group("output")
    add_output_args(p, type=str, help=f"run folder (default: {d.out})")
    r.add_argument(
        "--resume",
        action="store_const",
        const=True,
        help="continue the run in --out from last.ckpt",
    )
    r.add_argument(
        "--no-progress", dest="progress", action="store_const", const=False, help="no progress bar"
    )
    add_logging_args(p)
    return p


def _run(args: argparse.Namespace) -> int:
    from stpm_edge.backbones import list_backbones
    from stpm_edge.errors import ConfigError, note
    from stpm_edge.train import TrainConfig, train

    if args.list_backbones:
        print("\n".join(list_backbones()))
        return 0
    options = {
        k: v
        for k, v in vars(args).items()
        if k not in ("config", "list_backbones", "verbose", "quiet")
    }
    cfg = TrainConfig.from_sources(args.config, **options)
    if not cfg.data:
        raise ConfigError(
            note("no training data given", "pass --data ROOT (and --category CAT for MVTec layout)")
        )
    best = train(cfg)
    print(f"best checkpoint: {best}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        _run, build_parser, argv, needs=("torch",)
    )  # a builder: it imports torch (TrainConfig)


if __name__ == "__main__":
    raise SystemExit(main())
