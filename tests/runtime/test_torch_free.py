"""The runtime must import and run with torch and torchvision absent."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None          # any `import torch` now raises ImportError
    sys.modules["torchvision"] = None
    import numpy as np
    import stpm_edge.runtime
    from stpm_edge.runtime import AnomalyDetector
    import stpm_edge.runtime.camera, stpm_edge.runtime.runners.trt, stpm_edge.runtime.visualize
    with AnomalyDetector(sys.argv[1]) as det:
        [ng, ok] = det.predict([np.full((40, 50, 3), 250, np.uint8), np.zeros((40, 50, 3), np.uint8)],
                               overlay=True, regions=True)
    assert (ng.verdict, ok.verdict) == ("NG", "OK"), (ng, ok)
    assert sys.modules["torch"] is None and sys.modules["torchvision"] is None
    print("OK-TORCH-FREE")
    """
)


def test_runtime_runs_with_torch_blocked(fake_onnx) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(fake_onnx)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "OK-TORCH-FREE" in result.stdout


def test_import_does_not_load_torch_or_backends() -> None:
    code = (
        "import sys, stpm_edge.runtime, stpm_edge.runtime.camera; "
        "print(sorted(m for m in ('torch', 'torchvision', 'onnxruntime', 'tensorrt') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
