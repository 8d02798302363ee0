"""The STPM model: a frozen pretrained teacher and a same-architecture student.

The model only knows features and maps; training, checkpoints and export live elsewhere. Its modes
are explicit methods (``features``, ``loss``, ``score_map``) rather than a ``forward`` whose
return type follows ``self.training``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from stpm_edge import anomaly_map as am
from stpm_edge.backbones import create_backbone, get_backbone_spec
from stpm_edge.colour_map import ColourMap
from stpm_edge.errors import ConfigError, note
from stpm_edge.score_baseline import ScoreBaseline

logger = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model; saved in every checkpoint."""

    backbone: str = "efficientnet_lite0"
    image_size: int = 256
    teacher_weights: str = "pretrained"
    blur_sigma: float = 4.0
    score_reduction: str = "topk"
    topk_fraction: float = 0.01
    # where the map is combined, blurred and scored (anomaly_map module docstring); checkpoints
    # saved before this setting existed load as "input" (checkpoint.py), so their calibrated
    # thresholds keep their meaning
    map_resolution: str = "feature"
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        spec = get_backbone_spec(self.backbone)
        if self.image_size % spec.min_size_multiple or self.image_size < 32:
            raise ConfigError(
                note(
                    f"--image-size {self.image_size} does not fit {self.backbone}",
                    f"use a multiple of {spec.min_size_multiple} (e.g. 256)",
                )
            )
        if self.score_reduction not in ("max", "topk"):
            raise ConfigError(
                note(
                    f"--score-reduction {self.score_reduction!r} is unknown", "use 'max' or 'topk'"
                )
            )
        if self.map_resolution not in am.MAP_RESOLUTIONS:
            raise ConfigError(
                note(
                    f"--map-resolution {self.map_resolution!r} is unknown",
                    f"use one of {', '.join(am.MAP_RESOLUTIONS)}",
                )
            )
        self.mean = list(self.mean or spec.weights.mean)
        self.std = list(self.std or spec.weights.std)

    def to_dict(self) -> dict:
        return asdict(self)


class STPM(nn.Module):
    """Teacher (frozen, BatchNorm in eval mode) and student trunks of one backbone."""

    def __init__(self, config: ModelConfig, load_teacher: bool = True) -> None:
        """``load_teacher=False`` builds the teacher without weights (a checkpoint fills them)."""
        super().__init__()
        self.config = config
        if load_teacher and config.teacher_weights == "random":
            logger.warning(
                "the teacher has RANDOM weights: only for plumbing and speed tests, "
                "its anomaly maps mean nothing"
            )
        teacher_weights = config.teacher_weights if load_teacher else "random"
        self.teacher = create_backbone(config.backbone, weights=teacher_weights)
        self.student = create_backbone(config.backbone, weights="random")
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        # NHWC weights make every convolution run NHWC (PyTorch follows the weight's layout): the
        # student's training step is 1.9-2.2x faster on CPU (oneDNN's depthwise kernels), and
        # tensor cores want it on CUDA. Only strides change; exported graphs are the same.
        self.to(memory_format=torch.channels_last)
        # fitted post hoc from good images (stpm_edge.colour_map); None = off, as in old checkpoints
        self.colour: ColourMap | None = None
        # the score's per-position baseline (stpm_edge.score_baseline), post hoc too; None = off
        self.baseline: ScoreBaseline | None = None

    def train(self, mode: bool = True) -> STPM:
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics are ImageNet's: never updated
        return self

    @property
    def size(self) -> tuple[int, int]:
        return (self.config.image_size, self.config.image_size)

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(B, 3, H, W) normalised float -> (teacher features, student features), 3 scales each."""
        with torch.no_grad():
            teacher = self.teacher(x)
        return teacher, self.student(x)

    def loss(
        self,
        x: torch.Tensor,
        teacher_feats: list[torch.Tensor] | None = None,
        scale: float = 1.0,
    ) -> torch.Tensor:
        """The STPM training loss for a batch: float32 scalar (``scale``: see ``am.stpm_loss``).

        ``teacher_feats`` may be given when they are cached (the teacher is frozen and, without
        augmentation, its features of an image never change).
        """
        if teacher_feats is None:
            teacher_feats, student = self.features(x)
        else:
            student = self.student(x)
        # Under training's autocast the channel sums (convolutions) would run in bf16/fp16: a
        # sum of squares over 320 channels loses digits in bf16 and can pass fp16's 65504.
        with torch.autocast(x.device.type, enabled=False):
            return am.stpm_loss(teacher_feats, student, scale)

    def _fuser(self, x: torch.Tensor):
        return None if self.colour is None else self.colour.fuser(self.colour.of_normalised(x))

    @torch.no_grad()
    def scored_grid_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the map the score is taken on (B, 1, h, w) float32, on its grid, fused
        with the colour map, before the score baseline (what the baseline is fitted on)."""
        teacher, student = self.features(x)
        settings = am.MapSettings.of(self.config)
        return am.grid_map(teacher, student, tuple(x.shape[-2:]), settings, self._fuser(x))[0]

    @torch.no_grad()
    def score_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (anomaly map (B, 1, H, W) float32, image score (B,) float32)."""
        teacher, student = self.features(x)
        baseline = None if self.baseline is None else self.baseline.values
        amap, score, _ = am.score_map(
            teacher,
            student,
            tuple(x.shape[-2:]),
            am.MapSettings.of(self.config),
            self._fuser(x),
            baseline,
        )
        return amap, score
