"""The backbone registry: real pretrained offline teachers, feature contract, weight errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from stpm_edge.backbones import create_backbone, get_backbone_spec, list_backbones
from stpm_edge.errors import ConfigError, WeightsError

OFFLINE = [n for n in list_backbones() if get_backbone_spec(n).offline]
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_at_least_one_offline_teacher() -> None:
    assert "efficientnet_lite0" in OFFLINE


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_teacher_is_really_pretrained(name: str) -> None:
    """The registry's own load path classifies scikit-image's cat photo as a cat."""
    from skimage.data import chelsea

    spec = get_backbone_spec(name)
    rgb = cv2.resize(chelsea(), (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    x = (rgb - np.array(spec.weights.mean, np.float32)) / np.array(spec.weights.std, np.float32)
    x = torch.from_numpy(x.transpose(2, 0, 1)[None].copy())
    model = spec.build_classifier()
    spec.load_pretrained(model)
    with torch.no_grad():
        probs = torch.softmax(model.eval()(x), dim=1)[0]
    top = int(probs.argmax())
    assert top in CAT_CLASSES, f"{name}: top-1 class {top} (p={float(probs[top]):.3f}) is not a cat"
    assert float(probs[top]) >= 0.5


def test_unknown_backbone_lists_the_registered_names() -> None:
    with pytest.raises(ConfigError) as info:
        get_backbone_spec("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    for name in list_backbones():
        assert name in message
    with pytest.raises(ConfigError):
        create_backbone("resnet9000", "random")


@pytest.mark.parametrize("name", list_backbones())
def test_trunk_features_match_the_spec_stages(name: str) -> None:
    spec = get_backbone_spec(name)
    trunk = create_backbone(name, "random").eval()
    with torch.no_grad():
        feats = trunk(torch.randn(2, 3, 64, 64))
    assert len(feats) == 3 == len(spec.stages)
    for feat, stage in zip(feats, spec.stages, strict=True):
        assert feat.shape == (2, stage.num_chs, 64 // stage.reduction, 64 // stage.reduction)
    assert spec.reductions == [4, 8, 16]
    assert trunk.stem_name == spec.stem
    assert isinstance(trunk.get_submodule(spec.stem), torch.nn.Conv2d)


def test_resnet_without_network_names_both_ways_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import _api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(_api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsError) as info:
        create_backbone("resnet18", "pretrained")
    message = str(info.value)
    assert "resnet18" in message
    assert "--teacher-weights" in message
    assert "efficientnet_lite0" in message


def test_teacher_weights_file_is_loaded(tmp_path: Path) -> None:
    import torchvision

    full = torchvision.models.resnet18(weights=None)
    torch.nn.init.normal_(full.conv1.weight)  # distinct from any fresh random init
    path = tmp_path / "resnet18.pth"
    torch.save(full.state_dict(), path)
    trunk = create_backbone("resnet18", str(path))
    assert torch.equal(trunk.conv1.weight, full.conv1.weight)
    assert torch.equal(trunk.layer3[1].bn2.running_var, full.layer3[1].bn2.running_var)


def test_teacher_weights_file_with_wrong_keys(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3), "encoder.bias": torch.zeros(3)}, path)
    with pytest.raises(WeightsError) as info:
        create_backbone("resnet18", str(path))
    assert str(path) in str(info.value)


def test_teacher_weights_file_missing_or_not_a_state_dict(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("resnet18", str(tmp_path / "absent.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a zip file" * 10)
    with pytest.raises(WeightsError, match="garbage.pth"):
        create_backbone("resnet18", str(garbage))
