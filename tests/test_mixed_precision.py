"""``stpm-train --amp``: what each choice means on each device, and old checkpoints' bool."""

from __future__ import annotations

import pytest
import torch

from stpm_edge.cli.train import build_parser
from stpm_edge.errors import ConfigError
from stpm_edge.mixed_precision import normalise_amp, resolve_autocast
from stpm_edge.train import TrainConfig

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _native_bf16(monkeypatch, value: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: value)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: value)


def test_cpu_default_stays_float32_and_bf16_is_asked_for(monkeypatch, caplog) -> None:
    _native_bf16(monkeypatch, True)
    assert resolve_autocast("auto", CPU).dtype is None
    assert resolve_autocast("bf16", CPU).dtype == torch.bfloat16
    assert not caplog.records
    _native_bf16(monkeypatch, False)  # emulated bf16 is slower than float32: said, still done
    assert resolve_autocast("bf16", CPU).dtype == torch.bfloat16
    assert "no native bf16" in caplog.text


def test_cuda_keeps_fp16_with_a_grad_scaler_and_bf16_without() -> None:
    fp16 = resolve_autocast("auto", CUDA)
    assert fp16.dtype == torch.float16 and fp16.needs_grad_scaler
    bf16 = resolve_autocast("bf16", CUDA)
    assert bf16.dtype == torch.bfloat16 and not bf16.needs_grad_scaler
    assert resolve_autocast("off", CUDA).name == "off"


def test_fp16_on_a_cpu_and_unknown_choices_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="(?s)--amp fp16 is for CUDA.*Note: use --amp bf16"):
        resolve_autocast("fp16", CPU)
    with pytest.raises(ConfigError, match="(?s)--amp .half. is unknown.*auto, bf16, fp16, off"):
        TrainConfig(amp="half")


def test_checkpoints_from_before_the_choice_keep_their_meaning() -> None:
    assert normalise_amp(True) == "auto" and normalise_amp(False) == "off"
    assert TrainConfig(amp=False).amp == "off"


def test_no_amp_is_the_same_as_amp_off() -> None:
    parser = build_parser()
    assert parser.parse_args(["--no-amp"]).amp == "off"
    assert parser.parse_args(["--amp", "bf16"]).amp == "bf16"
    assert parser.parse_args([]).amp is None  # unset: TrainConfig's default applies
