"""Teacher backbones behind one registry: ``create_backbone(name)``, ``list_backbones()``."""

from . import efficientnet_lite, resnet  # noqa: F401  (registers the backbones)
from ._registry import (
    BackboneSpec,
    FeatureStage,
    FeatureTrunk,
    WeightsCfg,
    create_backbone,
    get_backbone_spec,
    list_backbones,
    read_state_dict,
    sha256_file,
)

__all__ = [
    "BackboneSpec",
    "FeatureStage",
    "FeatureTrunk",
    "WeightsCfg",
    "create_backbone",
    "get_backbone_spec",
    "list_backbones",
    "read_state_dict",
    "sha256_file",
]
