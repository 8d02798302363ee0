"""Data layer: image I/O, dataset sources (MVTec AD layout, plain folders), demo and benchmark builders.

Import the torch dataset from ``stpm_edge.data.torch_dataset``: this package itself does not
import torch, so listing or checking a dataset stays light.
"""

from stpm_edge.data.bench import build_bench_dataset
from stpm_edge.data.demo import DEFECT_TYPES, TEXTURES, build_demo_dataset
from stpm_edge.data.io import IMAGE_SUFFIXES, list_images, read_image, read_mask
from stpm_edge.data.mvtec import (
    ImageFolderSource,
    MVTecCategory,
    Sample,
    load_training_source,
    split_train_val,
)

__all__ = [
    "DEFECT_TYPES",
    "IMAGE_SUFFIXES",
    "TEXTURES",
    "ImageFolderSource",
    "MVTecCategory",
    "Sample",
    "build_bench_dataset",
    "build_demo_dataset",
    "list_images",
    "load_training_source",
    "read_image",
    "read_mask",
    "split_train_val",
]
