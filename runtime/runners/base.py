"""The backend-independent runner (Polygraphy-shaped, DESIGN.md §6).

The public methods live here and do the shared work once for every backend: the loaded-state
check, feed validation (names, dtypes, shapes; ``-1``/``None`` = dynamic), timing, and a warning
when a runner is garbage-collected still loaded. Backends implement only ``_load``, ``_infer``,
``_release``, ``_input_spec``, ``_output_names`` and ``_metadata``.

Model sources follow Polygraphy's loader idea: a backend takes a path, bytes, a ready object, or a
*loader* (a zero-argument callable that builds the object when called). A runner owns and frees
what it builds; it never frees an object it was handed ready-made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import numpy as np

from stpm_edge.errors import BackendError, note

logger = logging.getLogger(__name__)

Spec = dict[str, tuple[np.dtype, tuple[int, ...]]]


def format_shape(shape: Sequence[int | None], batch_name: str = "N") -> str:
    """``(-1, 256, 256, 3)`` -> ``"(N,256,256,3)"``; later dynamic dims print as ``?``."""
    dims = []
    for axis, dim in enumerate(shape):
        dynamic = dim is None or (isinstance(dim, int) and dim < 0)
        dims.append((batch_name if axis == 0 else "?") if dynamic else str(dim))
    return "(" + ",".join(dims) + ")"


def check_feeds(feeds: Mapping[str, np.ndarray], spec: Spec, runner_name: str) -> None:
    """Check feed names, dtypes and shapes against ``spec``; raise a message naming both sides.

    Raises:
        BackendError: a missing or unknown input, a non-array feed, a dtype or shape mismatch.
    """
    missing = [n for n in spec if n not in feeds]
    unknown = [n for n in feeds if n not in spec]
    if missing or unknown:
        raise BackendError(
            note(
                f"{runner_name}: feeds {sorted(feeds)} do not match the model inputs",
                f"expected inputs {list(spec)}; missing {missing}, unknown {unknown}",
            )
        )
    for name, (dtype, shape) in spec.items():
        array = feeds[name]
        if not isinstance(array, np.ndarray):
            raise BackendError(
                f"{runner_name}: input {name!r} must be a numpy.ndarray, got {type(array).__name__}"
            )
        ok = array.dtype == dtype and array.ndim == len(shape)
        if ok:
            for want, got in zip(shape, array.shape, strict=True):
                if want is not None and want >= 0 and want != got:
                    ok = False
        if not ok:
            raise BackendError(
                note(
                    f"{runner_name}: input {name!r} expected {np.dtype(dtype).name} "
                    f"{format_shape(shape)}, got {array.dtype.name} {format_shape(array.shape)}",
                    "frames go through stpm_edge.runtime.preprocess.prepare_batch, which builds "
                    "the layout the graph's metadata asks for",
                )
            )


def model_file(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path` if it is an existing file (what a runner given a path loads).

    Raises:
        BackendError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise BackendError(
            note(f"model file {path} not found", "pass the model.onnx stpm-export wrote")
        )
    return path


_C = TypeVar("_C", bound="ClosesOnExit")


class ClosesOnExit:
    """``with obj:`` for anything with a ``close()``: the block's end closes it, error or not."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Runner(ClosesOnExit):
    """Base class of every inference backend.

    Use as a context manager (``with create_runner(path) as runner: runner.infer(feeds)``) or call
    :meth:`load` / :meth:`close` yourself.

    Attributes:
        name: backend name, e.g. ``"onnxruntime[CPUExecutionProvider]"`` or ``"tensorrt"``.
        last_inference_ms: host-to-host wall time of the last :meth:`infer`, in milliseconds.
        is_loaded: whether :meth:`load` has run and :meth:`close` has not.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_loaded = False
        self.last_inference_ms = float("nan")
        self._spec: Spec | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def load(self) -> Runner:
        """Build the session/engine (idempotent) and return ``self``."""
        if not self.is_loaded:
            self._load()
            self.is_loaded = True
            self._spec = {
                n: (np.dtype(d), tuple(-1 if s is None else int(s) for s in shape))
                for n, (d, shape) in self._input_spec().items()
            }
            logger.debug("%s: loaded, inputs %s", self.name, self._spec)
        return self

    def close(self) -> None:
        """Free what the runner built (idempotent)."""
        if self.is_loaded:
            self.is_loaded = False
            self._spec = None
            self._release()

    def __enter__(self) -> Runner:
        return self.load()  # a runner entered is a runner loaded

    def __del__(self) -> None:
        if getattr(self, "is_loaded", False):
            warnings.warn(
                f"{self.name}: runner garbage-collected while still loaded; use it as a context "
                "manager or call close()",
                ResourceWarning,
                stacklevel=2,
            )
            # interpreter shutdown may have torn the backend down: nothing sensible left to do
            with contextlib.suppress(Exception):
                self.close()

    # -- public API ------------------------------------------------------------------------------
    def _require_loaded(self, what: str) -> None:
        if not self.is_loaded:
            raise BackendError(
                note(
                    f"{self.name}: {what}() called before load()",
                    "use `with runner:` or call runner.load() first",
                )
            )

    def input_spec(self) -> Spec:
        """``{name: (dtype, shape)}`` of the model inputs; dynamic dims are ``-1``."""
        self._require_loaded("input_spec")
        assert self._spec is not None
        return dict(self._spec)

    def output_names(self) -> list[str]:
        """Output names in the model's order."""
        self._require_loaded("output_names")
        return list(self._output_names())

    def metadata(self) -> dict[str, str]:
        """The model's ``stpm.*`` metadata props (strings)."""
        self._require_loaded("metadata")
        return dict(self._metadata())

    def max_batch_size(self) -> int | None:
        """Largest batch one :meth:`infer` accepts, or ``None`` when unbounded (ONNX Runtime)."""
        return None

    def infer(self, feeds: Mapping[str, np.ndarray], check: bool = True) -> dict[str, np.ndarray]:
        """Run the model once.

        Args:
            feeds: ``{input name: array}`` matching :meth:`input_spec`.
            check: validate names, dtypes and shapes first (cheap; keep it on).

        Returns:
            ``{output name: array}`` host arrays owned by the caller.
        """
        self._require_loaded("infer")
        if check:
            assert self._spec is not None
            check_feeds(feeds, self._spec, self.name)
        start = time.perf_counter()
        outputs = self._infer(dict(feeds))
        self.last_inference_ms = (time.perf_counter() - start) * 1000.0
        return outputs

    # -- backend hooks ---------------------------------------------------------------------------
    def _load(self) -> None:
        raise NotImplementedError

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _input_spec(self) -> dict[str, tuple[np.dtype, tuple[int | None, ...]]]:
        raise NotImplementedError

    def _output_names(self) -> list[str]:
        raise NotImplementedError

    def _metadata(self) -> dict[str, str]:
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        return f"<{type(self).__name__} {self.name} ({state})>"
