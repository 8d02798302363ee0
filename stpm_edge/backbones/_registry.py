"""The backbone registry: one front door (``create_backbone``) in front of small builders.

A backbone is published as a :class:`BackboneSpec`: how to build the classification architecture,
which three stages give the strides-4/8/16 features (module names, channels, reduction), which
module sees the image (the stem, needed to stack teacher and student into one network), and the
weight sets it knows (:class:`WeightsCfg`). Architecture and weights are separate objects: the
normalisation constants belong to the weights, never to the model code.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from stpm_edge.errors import ConfigError, WeightsError, note

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FeatureStage:
    """One feature scale: the module whose output is taken, its channels and its stride."""

    module: str
    num_chs: int
    reduction: int


@dataclass(frozen=True)
class WeightsCfg:
    """Everything that belongs to one pretrained weight set, not to the architecture."""

    tag: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str
    description: str
    sha256: str | None = None


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its builders, its feature contract and its weight set."""

    name: str
    build_classifier: Callable[[], nn.Module]
    build_trunk: Callable[[nn.Module], FeatureTrunk]
    load_pretrained: Callable[[nn.Module], None]
    stages: tuple[FeatureStage, ...]
    stem: str
    weights: WeightsCfg
    min_size_multiple: int = 16
    offline: bool = field(default=False)
    # modules (direct children of the trunk) every INT8 target (``cpu``, ``tensorrt``,
    # ``openvino``) keeps float32 besides the stem: where 8-bit activations cost accuracy,
    # measured per backbone
    int8_float: tuple[str, ...] = ()

    @property
    def channels(self) -> list[int]:
        return [s.num_chs for s in self.stages]

    @property
    def reductions(self) -> list[int]:
        return [s.reduction for s in self.stages]


class FeatureTrunk(nn.Module):
    """Base of the truncated networks: ``forward(x) -> [f_s4, f_s8, f_s16]``."""

    stem_name: str = ""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def streams(self) -> list[list[nn.Module]]:
        """The residual streams, in order: per stream the modules whose outputs it is. A positive
        factor on a stream (:meth:`scale_streams`) scales those outputs and the features read from
        them, and leaves every feature's direction — all STPM compares — unchanged. [] when the
        trunk cannot be rescaled."""
        return []

    def scale_streams(self, factors: Sequence[float]) -> None:  # pragma: no cover - abstract
        """Multiply stream ``i`` by ``factors[i]`` (> 0) by editing weights in place: the layers
        writing a stream scale their output, the layers reading it divide their weights."""
        raise NotImplementedError(f"{type(self).__name__} cannot scale its streams")


def scale_batch_norm(bn: nn.BatchNorm2d, factor: float) -> None:
    """Scale a batch norm's output by ``factor``: its affine weight and bias (in place)."""
    with torch.no_grad():
        bn.weight.mul_(factor)
        bn.bias.mul_(factor)


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(factory: Callable[[], BackboneSpec]) -> Callable[[], BackboneSpec]:
    """Decorator: register the spec a zero-argument factory returns, under ``spec.name``."""
    spec = factory()
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} registered twice")
    _check_stages(spec)
    _REGISTRY[spec.name] = spec
    return factory


def _check_stages(spec: BackboneSpec) -> None:
    reductions = spec.reductions
    assert all(c > 0 for c in spec.channels), spec.name
    assert reductions == sorted(reductions), f"{spec.name}: strides must never shrink"


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching a shell-style wildcard, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_backbone_spec(name: str) -> BackboneSpec:
    """The spec of ``name``; a :class:`ConfigError` listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            note(
                f"unknown backbone {name!r}", f"registered backbones: {', '.join(list_backbones())}"
            )
        ) from None


def create_backbone(name: str, weights: str = "pretrained") -> FeatureTrunk:
    """Build the truncated feature trunk of ``name``.

    Args:
        name: a registered backbone (see :func:`list_backbones`).
        weights: ``"pretrained"`` (the spec's weight set), ``"random"`` (plumbing tests and
            students only) or a path to a state-dict file of the full classifier.
    """
    spec = get_backbone_spec(name)
    classifier = spec.build_classifier()
    if weights == "pretrained":
        spec.load_pretrained(classifier)
    elif weights != "random":
        load_state_dict_file(classifier, Path(weights))
    return spec.build_trunk(classifier)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a plain state dict safely (``weights_only=True``), verifying its hash if known."""
    if not path.is_file():
        raise WeightsError(
            note(f"weights file not found: {path}", "give an existing state-dict file")
        )
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise WeightsError(
            note(
                f"weights file {path} failed its sha256 check",
                f"expected {expected_sha256}; reinstall the package that ships it",
            )
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or pickled files
        raise WeightsError(
            note(
                f"cannot read weights file {path}: {exc}",
                "expected a state dict saved with torch.save(model.state_dict())",
            )
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(note(f"{path} does not hold a state dict", "expected a dict of tensors"))
    return state


def load_state_dict_file(model: nn.Module, path: Path) -> None:
    """Load a user's weights file into the full classifier, with a clear key-mismatch error."""
    state = read_state_dict(path)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(("fc.", "_fc."))]
    if missing:
        raise WeightsError(
            note(
                f"weights file {path} does not fit this architecture",
                f"{len(missing)} missing keys, e.g. {missing[:3]}; unexpected: {result.unexpected_keys[:3]}",
            )
        )
    logger.info("loaded teacher weights from %s", path)
