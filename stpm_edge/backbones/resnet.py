"""torchvision ResNets (the paper's teachers): features of layer1..layer3 (strides 4, 8, 16).

Pretrained weights come through torchvision's own download and cache on users' machines, or from
a state-dict file (``--teacher-weights FILE``). Without either, training stops with a message that
names both ways out, never silently with a random teacher.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    scale_batch_norm,
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

    def streams(self) -> list[list[nn.Module]]:
        """One stream per layer; the stem's output joins layer1's (its first block adds it)."""
        return [[self.maxpool, *self.layer1], list(self.layer2), list(self.layer3)]

    def scale_streams(self, factors: Sequence[float]) -> None:
        """ReLU and max-pooling commute with a positive factor, so the stem's batch norm scales
        the first stream; in each block the first convolution (and a downsampling one) reads the
        stream before it, the last batch norm (and the downsampling one) writes the block's."""
        if len(factors) != 3:
            raise ValueError(f"3 stream factors expected, got {len(factors)}")
        scale_batch_norm(self.bn1, factors[0])
        reading = factors[0]
        with torch.no_grad():
            for layer, factor in zip((self.layer1, self.layer2, self.layer3), factors, strict=True):
                for block in layer:
                    block.conv1.weight.div_(reading)
                    scale_batch_norm(block.bn3 if hasattr(block, "bn3") else block.bn2, factor)
                    if block.downsample is not None:
                        block.downsample[0].weight.div_(reading)
                        scale_batch_norm(block.downsample[1], factor)
                    reading = factor


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
