"""Mixed precision for training (``stpm-train --amp``): which autocast dtype a device gets.

- ``auto`` (the default): float16 on CUDA, with a gradient scaler; float32 on a CPU.
- ``bf16``: bfloat16 autocast, on CUDA or on a CPU (a CPU without native bf16 warns: emulated,
  it is slower than float32). On this project's 2-core EPYC (AVX-512 BF16) it does not pay: its
  1.28x on ``stpm-train``'s epoch loop came mostly from moving half the bytes through page
  faults, and with ``--host-memory retain`` (the default, ``stpm_edge.host_memory``) a whole bf16
  training takes longer than float32's (``benchmarks/reports/cpu-epyc-2core/train_speed``). It
  changes the training numerics, so it stays opt-in.
- ``fp16``: float16, CUDA only; ``off``: float32.

Only the student's forward runs in the low precision: cached teacher features are computed once
in float32, and the loss (normalisation, distances) is float32 whatever comes in
(``STPM.loss`` leaves autocast for it), so the training targets keep their precision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from stpm_edge.choices import AMP_CHOICES
from stpm_edge.errors import ConfigError, note

logger = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 dot products in hardware (x86 AVX-512 BF16 or AMX)."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


@dataclass(frozen=True)
class Autocast:
    """The resolved choice: ``dtype`` ``None`` means float32 throughout."""

    device_type: str
    dtype: torch.dtype | None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def needs_grad_scaler(self) -> bool:
        """float16 gradients underflow without loss scaling; bfloat16 has float32's range."""
        return self.dtype == torch.float16

    @property
    def name(self) -> str:
        return {None: "off", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]

    def context(self) -> torch.autocast:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_grad_scaler)


def normalise_amp(value: str | bool) -> str:
    """``--amp`` as stored; checkpoints written before the choice existed hold a bool."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    if value not in AMP_CHOICES:
        raise ConfigError(
            note(f"--amp {value!r} is unknown", f"use one of: {', '.join(AMP_CHOICES)}")
        )
    return value


def resolve_autocast(amp: str, device: torch.device) -> Autocast:
    """The autocast ``amp`` means on ``device``."""
    if amp == "off":
        return Autocast(device.type, None)
    if device.type == "cuda":
        return Autocast("cuda", torch.bfloat16 if amp == "bf16" else torch.float16)
    if amp == "fp16":
        raise ConfigError(
            note(
                f"--amp fp16 is for CUDA; this run trains on {device.type}",
                "use --amp bf16 (or auto) on a CPU, or --device cuda",
            )
        )
    if amp == "bf16":
        if not cpu_has_native_bf16():
            logger.warning("--amp bf16: this CPU has no native bf16; expect it slower than float32")
        return Autocast(device.type, torch.bfloat16)
    return Autocast(device.type, None)  # auto on a CPU: float32
