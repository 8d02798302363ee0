"""--host-memory: 'retain' keeps freed blocks in the process (no page faults on reuse)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from stpm_edge.errors import ConfigError
from stpm_edge.host_memory import apply_host_memory
from stpm_edge.train import TrainConfig

# A child process: the setting is process-wide and cannot be undone. It allocates and frees a
# 64 MB block ten times, as a training step does with its activations, and counts the minor page
# faults (pages the kernel had to map in and zero).
CHILD = """
import json, resource, sys
from stpm_edge.host_memory import apply_host_memory
mode = apply_host_memory(sys.argv[1])
block = bytearray(64 << 20); del block  # the first one page-faults in every case
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    block = bytearray(64 << 20); del block
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"mode": mode, "faults": faults}))
"""

PAGES_PER_BLOCK = (64 << 20) // 4096


def _faults(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_retain_reuses_freed_blocks_without_page_faults() -> None:
    system, retain = _faults("system"), _faults("retain")
    assert system["mode"] == "system" and retain["mode"] == "retain"
    # glibc's default maps and unmaps each 64 MB block: every page faults in again
    assert system["faults"] > 8 * PAGES_PER_BLOCK, system
    assert retain["faults"] < PAGES_PER_BLOCK, retain


def test_unknown_mode_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="(?s)--host-memory 'keep'.*retain, system"):
        apply_host_memory("keep")
    with pytest.raises(ConfigError, match="--host-memory"):
        TrainConfig(data="x", host_memory="keep")
