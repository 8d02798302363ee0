"""stpm-edge: Student-Teacher Feature Pyramid Matching for the edge.

This top-level module stays free of torch imports: ``stpm_edge.runtime`` lives under it and must
import on a device that has only numpy, OpenCV and ONNX Runtime or TensorRT.
"""

__version__ = "0.1.0"
