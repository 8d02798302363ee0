"""How the process's C allocator hands memory back (``stpm-train --host-memory``).

A CPU training step allocates and frees tensors of tens to hundreds of MB (batch 32 at 256 px:
the stem's output alone is 64 MB, a block's expanded activations 200 MB). glibc serves blocks
that large with a fresh ``mmap`` and returns them with ``munmap`` on free, so the next step
page-faults every page in again and the kernel zeroes it. On this project's 2-core EPYC that
was a quarter to a third of a whole default training
(``benchmarks/reports/cpu-epyc-2core/train_speed``).

- ``retain`` (the default): ``mallopt`` stops glibc from using ``mmap`` for large blocks and
  from trimming the heap below 1 GiB of free space at its top, so freed activations are reused
  by the next step. The numbers computed do not change; the process keeps its peak memory until
  it exits (measured: 5.3 instead of 4.5 GB peak for a default training).
- ``system``: the C library's own behaviour.

Only glibc has these knobs: elsewhere (macOS, Windows, musl) ``retain`` does nothing and says so
in the log.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

from stpm_edge.choices import HOST_MEMORY_CHOICES
from stpm_edge.errors import ConfigError, note

logger = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Free space at the heap's top above this is still returned to the system: a run that once
# peaked far above its steady state does not keep all of it.
TRIM_THRESHOLD_BYTES = 1 << 30

_applied: str | None = None


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def apply_host_memory(mode: str) -> str:
    """Set the allocator for this process; returns what is in effect: ``retain`` or ``system``.

    ``retain`` cannot be undone in a process (glibc's adaptive threshold does not come back), so
    a later ``system`` in the same process reports ``retain`` and logs why.
    """
    global _applied
    if mode not in HOST_MEMORY_CHOICES:
        raise ConfigError(
            note(
                f"--host-memory {mode!r} is unknown",
                f"use one of: {', '.join(HOST_MEMORY_CHOICES)}",
            )
        )
    if _applied == "retain":
        if mode == "system":
            logger.info("--host-memory system: this process already retains freed memory")
        return "retain"
    if mode == "system":
        return "system"
    libc = _glibc()
    if libc is None:
        logger.info(
            "--host-memory retain: not glibc (%s), the C library's allocator stays",
            platform.system(),
        )
        return "system"
    # mallopt returns 1 on success (0 for an unknown parameter or value)
    if not (libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        logger.warning("--host-memory retain: glibc refused mallopt; the allocator stays as it was")
        return "system"
    _applied = "retain"
    return "retain"
