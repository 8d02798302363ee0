"""The colour map's gate is set on JPEG copies of the good validation images too
(``--colour-gate-jpeg``, stpm_edge.colour_map.GATE_JPEG_QUALITY): a live frame's compression is
not a stain, a stain still is. A random-teacher EfficientNet-Lite0 at 64 px (the STPM side only
has to exist), ``local`` mode on a grey grain texture: its nearest-colour distances on the good
images' own encoding are far below a JPEG codec's colour error."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from stpm_edge import colour_map as cm
from stpm_edge.choices import check_gate_jpeg
from stpm_edge.runtime.image import jpeg_round_trip

SIZE = 64


def grey_grain(seed: int, n: int) -> np.ndarray:
    """uint8 RGB (n, S, S, 3): a grey photo texture (luminance grain, one tint) with gain jitter."""
    rng = np.random.default_rng(seed)
    grain = np.stack(
        [cv2.GaussianBlur(rng.normal(0, 0.5, (SIZE, SIZE)), (0, 0), 1.2) for _ in range(n)]
    )
    gain = rng.uniform(0.9, 1.1, (n, 1, 1))
    lum = 120.0 * (1.0 + grain) * gain
    tint = np.array([1.0, 0.97, 0.93])
    return np.clip(lum[..., None] * tint, 0, 255).astype(np.uint8)


def stain(rgb: np.ndarray) -> np.ndarray:
    out = rgb.astype(np.float32)
    out[:, 16:40, 20:44] *= np.array([1.12, 0.94, 0.94], np.float32)  # hue moves, luminance stays
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model():
    from stpm_edge.model import STPM, ModelConfig

    torch.manual_seed(0)
    return STPM(ModelConfig(image_size=SIZE, teacher_weights="random")).eval()


@pytest.fixture(scope="module")
def colour_maps(model) -> dict[int, cm.ColourMap]:
    train, val = grey_grain(0, 16), grey_grain(1, 8)
    return {q: cm.fit_colour_map(model, train, val, "local", gate_jpeg=q) for q in (0, 90)}


def fired(colour: cm.ColourMap, rgb: np.ndarray) -> np.ndarray:
    """Per image, the share of cells over the gate (what the fusion adds to the STPM map). About
    0.1-0.6 % on the good images' own encoding: the gate is their 0.999 quantile."""
    x = torch.from_numpy(np.moveaxis(rgb, -1, 1).astype(np.float32) / 255.0)
    with torch.no_grad():
        excess = torch.relu(colour(x) / colour.scale - 1.0)
    return (excess > 0).float().mean((1, 2, 3)).numpy()


def test_compressed_good_frames_do_not_fire_the_gate(colour_maps) -> None:
    good = grey_grain(2, 8)
    assert fired(colour_maps[90], good).max() < 0.01
    for quality in (90, 75):  # the gate's own quality and a lower one
        compressed = jpeg_round_trip(good, quality)
        assert fired(colour_maps[0], compressed).min() > 0.2  # lossless-only: the codec is a stain
        assert fired(colour_maps[90], compressed).max() < 0.02


def test_a_colour_stain_still_fires_it(colour_maps) -> None:
    stained = stain(grey_grain(3, 6))  # the stain covers 14 % of the frame
    for frames in (stained, jpeg_round_trip(stained, 90)):
        assert fired(colour_maps[90], frames).min() > 0.1


def test_the_setting_is_recorded_and_rescaling_keeps_it(colour_maps, model) -> None:
    assert colour_maps[90].stats.gate_jpeg == 90 and colour_maps[0].stats.gate_jpeg == 0
    # the STPM scale is measured on the same images the colour scale was
    scaled_on = cm.scale_images(grey_grain(1, 8), 90)
    assert len(scaled_on) == 16
    assert colour_maps[90].stats.stpm_scale == pytest.approx(cm.stpm_scale(model, scaled_on))
    entry = colour_maps[90].stats.to_payload()
    assert cm.ColourStats.from_payload(entry).gate_jpeg == 90
    del entry["gate_jpeg"]  # a checkpoint from before the setting: scaled on the images alone
    assert cm.ColourStats.from_payload(entry).gate_jpeg == 0


@pytest.mark.parametrize("bad", [-1, 101, True, "high", 95.5, None])
def test_bad_quality_names_the_flag(bad) -> None:
    with pytest.raises(ValueError, match="--colour-gate-jpeg"):
        check_gate_jpeg(bad)
    assert check_gate_jpeg(0) == 0 and check_gate_jpeg(100) == 100
