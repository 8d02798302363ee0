"""torchvision ResNets (the paper's teachers): features of layer1..layer3 (strides 4, 8, 16).

Pretrained weights come through torchvision's own download and cache on users' machines, or from
a state-dict file (``--teacher-weights FILE``). Without either, training stops with a message that
names both ways out, never silently with a random teacher.
"""

from __future__ import annotations

import torch
from torch import nn

from stpm_edge.errors import WeightsError, note

from ._registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
    FeatureStage,
    FeatureTrunk,
    WeightsCfg,
    register_backbone,
)


class ResNetTrunk(FeatureTrunk):
    """conv1..layer3 of a torchvision ResNet; layer4 and the classifier are dropped."""

    stem_name = "conv1"

    def __init__(self, full: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = (
            full.conv1,
            full.bn1,
            full.relu,
            full.maxpool,
        )
        self.layer1, self.layer2, self.layer3 = full.layer1, full.layer2, full.layer3

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        return [f1, f2, self.layer3(f2)]


def _torchvision_loader(arch: str):
    def load(model: nn.Module) -> None:
        import torchvision

        weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # URLError, OSError, hash mismatch: all mean "not available"
            raise WeightsError(
                note(
                    f"cannot get the ImageNet weights of {arch} from torchvision ({type(exc).__name__}: {exc})",
                    "download them once on a machine with internet (they are cached under ~/.cache/torch), "
                    "pass --teacher-weights FILE (a state dict), or use the offline teacher "
                    "--backbone efficientnet_lite0",
                )
            ) from exc
        model.load_state_dict(state, strict=True)

    return load


def _resnet_spec(arch: str, channels: tuple[int, int, int]) -> BackboneSpec:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, arch)(weights=None)

    return BackboneSpec(
        name=arch,
        build_classifier=build,
        build_trunk=ResNetTrunk,
        load_pretrained=_torchvision_loader(arch),
        stages=tuple(FeatureStage(f"layer{i + 1}", c, 4 * 2**i) for i, c in enumerate(channels)),
        stem="conv1",
        weights=WeightsCfg(
            "tv_in1k",
            IMAGENET_MEAN,
            IMAGENET_STD,
            "BSD-3-Clause (torchvision)",
            "ImageNet-1k IMAGENET1K_V1 through torchvision's download cache",
        ),
    )


@register_backbone
def resnet18() -> BackboneSpec:
    return _resnet_spec("resnet18", (64, 128, 256))


@register_backbone
def resnet34() -> BackboneSpec:
    return _resnet_spec("resnet34", (64, 128, 256))


@register_backbone
def wide_resnet50_2() -> BackboneSpec:
    return _resnet_spec("wide_resnet50_2", (256, 512, 1024))
