"""The torch-free runtime: runners (ONNX Runtime, TensorRT), the detector and ``stpm-camera``.

Needs only numpy, OpenCV and a backend (onnxruntime or TensorRT + cuda-python), which are
imported when a runner loads. Nothing here may import torch, directly or transitively.
"""

from .detector import AnomalyDetector, Detector, Prediction
from .metadata import ModelInfo, parse_metadata
from .preprocess import prepare_batch
from .runners import Runner, available_backends, create_runner

__all__ = [
    "AnomalyDetector",
    "Detector",
    "ModelInfo",
    "Prediction",
    "Runner",
    "available_backends",
    "create_runner",
    "parse_metadata",
    "prepare_batch",
]
