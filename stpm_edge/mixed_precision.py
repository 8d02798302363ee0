"""Mixed precision for training (``stpm-train --amp``): which autocast dtype a device gets.

- ``auto`` (the default): float16 on CUDA (with a gradient scaler, as before); bfloat16 on a CPU
  with native bf16 dot products (AVX-512 BF16 or AMX), where oneDNN runs the student's step 1.4x
  faster (``benchmarks/reports/cpu-epyc-2core/train_speed``); float32 on other CPUs, where bf16 is
  emulated and slower than float32.
- ``bf16`` / ``fp16``: that dtype wherever it is supported; ``off``: float32.

Only the student's forward runs in the low precision: cached teacher features are computed once
in float32, and the loss (normalisation, distances) is float32 whatever comes in
(``anomaly_map.scale_distance``), so the training targets keep their precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stpm_edge.errors import ConfigError, note

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


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
    if amp == "bf16" or cpu_has_native_bf16():
        return Autocast(device.type, torch.bfloat16)
    return Autocast(device.type, None)
