"""Small helpers several test modules share (``tests/`` is on ``sys.path``, see ``fakes``)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence

import numpy as np


def run_quiet(main: Callable[[Sequence[str]], int], argv: list[str]) -> tuple[int, str]:
    """A CLI's ``main(argv)`` with its output swallowed -> (exit code, what it wrote to stderr)."""
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        rc = main(argv)
    return rc, stderr.getvalue()


def normalised(model, rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (N, S, S, 3) -> the model's normalised float input (N, 3, S, S)."""
    from stpm_edge.runtime.image import normalize

    return normalize(rgb, model.config.mean, model.config.std)


def run_graph(graph, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """An in-memory ONNX graph on ONNX Runtime's CPU provider, one thread -> outputs by name."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        graph.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": inputs}), strict=True))
