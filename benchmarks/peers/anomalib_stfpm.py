"""Export anomalib's STFPM (the peer of issue 12) as ONNX, OpenVINO IR and OpenVINO INT8 IR.

A standalone script for a throw-away venv: anomalib is never a dependency of stpm-edge, and this
script imports nothing from it. ``stpm-bench --peer LABEL=FILE`` then times the files it writes
in the same process, with the same batch/threads/warm-up policy, as our own graphs.

What it builds: ``anomalib.models.Stfpm(backbone="resnet18", layers=layer1..3)`` with its default
pre-processor (resize + ImageNet normalisation) and post-processor in the graph, exported at
256x256 through anomalib's own API (``Engine.export``):

- ``onnx/model.onnx``: ``ExportType.ONNX`` (dynamo exporter, dynamic batch).
- ``openvino/model.xml``: ``ExportType.OPENVINO`` with no compression, i.e. a float32 IR; the
  OpenVINO CPU plugin picks the inference precision at compile time (bf16 on a CPU with BF16
  units unless told otherwise: ``stpm-bench``'s ``openvino`` backend says f32, ``openvino-bf16``
  says bf16).
- ``openvino_int8/model.xml``: ``CompressionType.INT8_PTQ``: NNCF post-training quantisation,
  calibrated on a ``Folder`` datamodule's validation loader exactly as anomalib does it.

The teacher is NOT pretrained (random weights): anomalib's torch model asks timm for ImageNet
weights, which this machine cannot download, so the script builds the teacher with
``pre_trained=False``. The model is not trained either: the post-processor gets finite
placeholder statistics (:func:`fitted_post_processor`) where training would leave fitted ones.
Latency does not depend on these values; the graph is the same. Scores of these files mean
nothing: they exist to be timed.

Create the venv (outside the repository; torch/torchvision from this machine's disk)::

    python3 -m venv /work/peers/anomalib-venv
    printf 'torch==2.14.1\\ntorchvision==0.29.1\\n' > /work/peers/constraints.txt
    /work/peers/anomalib-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        -c /work/peers/constraints.txt
    /work/peers/anomalib-venv/bin/pip install "anomalib[openvino]==2.7.0" \\
        -c /work/peers/constraints.txt

Run::

    /work/peers/anomalib-venv/bin/python benchmarks/peers/anomalib_stfpm.py \\
        --out /work/peers/out --images demo_out/data/brick/train/good

``--images``: a folder of normal images for the INT8 calibration (any size; resized to 256x256);
omitted, 64 random 256x256 PNGs are written to ``OUT/calibration/`` and used. ``OUT/peers.json``
lists the versions, the files with their input name/shape/dtype, and the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

SIZE = (256, 256)
BACKBONE = "resnet18"
LAYERS = ("layer1", "layer2", "layer3")
DISTRIBUTIONS = ("anomalib", "nncf", "openvino", "torch", "torchvision", "onnx", "lightning")


def build_model() -> Any:
    """anomalib's Stfpm with a randomly initialised teacher (no model hub here)."""
    from anomalib.models import Stfpm
    from anomalib.models.image.stfpm import torch_model

    hub_extractor = torch_model.TimmFeatureExtractor

    def offline_extractor(*args: Any, **kwargs: Any) -> Any:
        # STFPMModel hard-codes pre_trained=True for the teacher; timing needs no weights
        return hub_extractor(*args, **{**kwargs, "pre_trained": False})

    torch_model.TimmFeatureExtractor = offline_extractor
    try:
        model = Stfpm(backbone=BACKBONE, layers=list(LAYERS))
    finally:
        torch_model.TimmFeatureExtractor = hub_extractor
    fitted_post_processor(model.post_processor)
    return model.eval()


def fitted_post_processor(post: Any) -> None:
    """Finite statistics in anomalib's post-processor, as validation leaves them after training.

    A model never validated holds NaN min/max/thresholds; exported, they become NaN clamp bounds
    that OpenVINO's low-precision transformations reject when compiling the INT8 IR
    ("Attribute 'min' must be less or equal than 'max'. Got: -nan and -nan"). A trained model's
    graph has the same operators with finite constants: these placeholder values give that graph.
    """
    for name, value in {"image_min": 0.0, "image_max": 1.0, "pixel_min": 0.0, "pixel_max": 1.0,
                        "_image_threshold": 0.5, "_pixel_threshold": 0.5}.items():  # fmt: skip
        getattr(post, name).fill_(value)


def synthetic_images(folder: Path, count: int = 64, seed: int = 0) -> Path:
    """``count`` random 256x256 RGB PNGs in ``folder`` (calibration input when none is given)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


def calibration_datamodule(images: Path) -> Any:
    """A ``Folder`` datamodule over normal images; INT8_PTQ calibrates on its validation split.

    Only normal images: the test split takes ``normal_split_ratio`` of them and the validation
    split is the same as the test split. Images are resized to 256x256 so the batches stack.
    """
    from anomalib.data import Folder
    from torchvision.transforms.v2 import Resize

    return Folder(
        name="calibration",
        normal_dir=images,
        normal_split_ratio=0.5,
        test_split_mode="from_dir",
        val_split_mode="same_as_test",
        augmentations=Resize(SIZE, antialias=True),
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
        seed=0,
    )


def export_all(out: Path, images: Path) -> dict[str, Path]:
    """The three exports through ``Engine.export``; returns ``{kind: file}``."""
    from anomalib.deploy import CompressionType, ExportType
    from anomalib.engine import Engine

    model = build_model()
    engine = Engine(default_root_dir=str(out / "engine"), accelerator="cpu", devices=1)
    files = {
        "onnx": engine.export(model, ExportType.ONNX, out / "onnx_export", input_size=SIZE),
        "openvino": engine.export(
            model, ExportType.OPENVINO, out / "openvino_export", input_size=SIZE
        ),
        "openvino_int8_ptq": engine.export(
            model,
            ExportType.OPENVINO,
            out / "openvino_int8_export",
            input_size=SIZE,
            compression_type=CompressionType.INT8_PTQ,
            datamodule=calibration_datamodule(images),
        ),
    }
    return {kind: Path(path) for kind, path in files.items()}


def input_facts(path: Path) -> dict[str, Any]:
    """Name, shape (-1 = dynamic) and dtype of each input, read with OpenVINO (ONNX or IR)."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    return {
        port.get_any_name(): {
            "shape": [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()],
            "dtype": port.get_element_type().get_type_name(),
        }
        for port in model.inputs
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = version(name)
        except Exception:  # not installed: record it as such
            found[name] = None
    return found


def manifest(out: Path, files: dict[str, Path], argv: list[str]) -> dict[str, Any]:
    return {
        "peer": "anomalib Stfpm",
        "backbone": BACKBONE,
        "layers": list(LAYERS),
        "input_size": list(SIZE),
        "teacher_weights": "random (pre_trained=False): timing only, scores are meaningless",
        "post_processor": "untrained: placeholder min 0, max 1, thresholds 0.5 (image, pixel)",
        "versions": versions(),
        "files": {
            kind: {"path": str(path), "inputs": input_facts(path)} for kind, path in files.items()
        },
        "command": shlex.join([sys.executable, *argv]),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--images", type=Path, default=None, help="normal images for INT8 calibration"
    )
    args = parser.parse_args(argv[1:])
    if args.images is not None and not args.images.is_dir():
        parser.error(f"--images {args.images} is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    images = args.images or synthetic_images(args.out / "calibration")
    files = export_all(args.out.resolve(), images.resolve())
    facts = manifest(args.out, files, argv)
    (args.out / "peers.json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
