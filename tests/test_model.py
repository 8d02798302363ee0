"""STPM model: a frozen teacher, a trainable student, explicit score maps."""

from __future__ import annotations

import pytest
import torch

from stpm_edge import anomaly_map as am
from stpm_edge.errors import ConfigError
from stpm_edge.model import STPM, ModelConfig


@pytest.fixture(scope="module")
def model() -> STPM:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="efficientnet_lite0", image_size=32, teacher_weights="random")
    return STPM(cfg)


def test_teacher_is_frozen_and_stays_in_eval(model: STPM) -> None:
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for p in model.student.parameters())
    model.train()
    try:
        assert model.training and model.student.training
        assert not model.teacher.training
        assert not any(m.training for m in model.teacher.modules())
    finally:
        model.eval()


def test_teacher_batchnorm_statistics_do_not_move(model: STPM) -> None:
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    model.train()
    try:
        model.loss(torch.randn(4, 3, 32, 32) * 3 + 1)
    finally:
        model.eval()
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_loss_backward_reaches_only_the_student(model: STPM) -> None:
    model.zero_grad(set_to_none=True)
    model.train()
    try:
        loss = model.loss(torch.randn(2, 3, 32, 32))
    finally:
        model.eval()
    assert loss.dim() == 0 and loss.dtype == torch.float32 and float(loss.detach()) > 0
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    grads = [p.grad for p in model.student.parameters()]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)
    model.zero_grad(set_to_none=True)


def test_loss_with_cached_teacher_features_is_the_same(model: STPM) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cached = model.teacher(x)
        assert float(model.loss(x, cached)) == pytest.approx(float(model.loss(x)), rel=1e-6)


def test_score_map_shapes_and_dtypes(model: STPM) -> None:
    amap, score = model.score_map(torch.randn(3, 3, 32, 32))
    assert amap.shape == (3, 1, 32, 32) and amap.dtype == torch.float32
    assert score.shape == (3,) and score.dtype == torch.float32
    assert not amap.requires_grad
    assert torch.isfinite(amap).all() and (amap >= 0).all()
    # the default reduction is the mean of the top 1 %: between the mean and the max of the map
    flat = amap.flatten(1)
    assert (score <= flat.amax(1) + 1e-7).all() and (score >= flat.mean(1)).all()


@pytest.mark.parametrize("size", [40, 100, 250, 16])
def test_config_rejects_sizes_not_multiple_of_16(size: int) -> None:
    with pytest.raises(ConfigError, match="image-size"):
        ModelConfig(image_size=size)


def test_config_defaults_come_from_the_backbone_spec() -> None:
    cfg = ModelConfig(backbone="resnet18", image_size=64, teacher_weights="random")
    assert cfg.mean == [0.485, 0.456, 0.406] and cfg.std == [0.229, 0.224, 0.225]
    lite = ModelConfig(image_size=64)
    assert lite.mean == [0.5, 0.5, 0.5] and lite.std == [0.5, 0.5, 0.5]
    with pytest.raises(ConfigError):
        ModelConfig(image_size=64, score_reduction="median")
    with pytest.raises(ConfigError):
        ModelConfig(backbone="nope", image_size=64)


def test_convolutions_run_channels_last(model: STPM) -> None:
    """Both trunks keep NHWC weights (training speed, see STPM.__init__), and a state dict saved
    from them loads into a fresh model to the same features."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    other = STPM(model.config, load_teacher=False)
    other.load_state_dict(model.state_dict())
    other.train(model.training)
    x = torch.randn(2, 3, 32, 32)
    for a, b in zip(model.features(x)[1], other.features(x)[1]):
        torch.testing.assert_close(a, b)


def test_training_loss_stays_float32_under_autocast(model: STPM) -> None:
    """Training's bf16/fp16 autocast covers the student only: the loss's channel sums are
    convolutions, which autocast would run in bf16 and lose digits (fp16: overflow)."""
    torch.manual_seed(1)
    x = 3.0 * torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        teacher = model.teacher(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            student = model.student(x)
            loss = model.loss(x, teacher)
    expected = am.stpm_loss(teacher, [s.float() for s in student])
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0.0)
