"""Dataset sources: the MVTec AD folder layout and a plain folder of good images.

MVTec AD layout, one folder per category under ``ROOT``::

    ROOT/<category>/train/good/*.png               good images, training only
    ROOT/<category>/test/good/*.png                good test images (label 0)
    ROOT/<category>/test/<defect>/*.png            defective test images (label 1)
    ROOT/<category>/ground_truth/<defect>/<stem>_mask.png   nonzero = defect, same size as image

``MVTecCategory`` lists and checks the layout when built (cheap: file names only); ``validate()``
also decodes every file, catching corrupt images and masks whose size differs from their image.
With ``skip_bad=True`` bad samples are dropped with a logged warning and counted in ``skipped``
instead of raising. ``ImageFolderSource`` is a folder of good images, for training without labels.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stpm_edge.data.io import IMAGE_SUFFIXES, decode_raw, list_images
from stpm_edge.errors import ConfigError, DataError, note

logger = logging.getLogger(__name__)

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    Attributes:
        path: the image file.
        label: 0 good, 1 defective.
        defect_type: ``"good"`` or the defect folder name (``"scratch"``, ...).
        mask_path: ground-truth mask file for a defective image, else None.
    """

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, decoding it (raises DataError if corrupt)."""
    return tuple(decode_raw(path).shape[:2])  # type: ignore[return-value]


class MVTecCategory:
    """One category of an MVTec-AD-layout dataset.

    Args:
        root: the dataset root (the folder holding one folder per category).
        category: the category folder name, e.g. ``"bottle"``.
        skip_bad: drop bad samples (missing mask, corrupt file, size mismatch) with a warning
            instead of raising ``DataError``; the number dropped is ``self.skipped``.

    Raises:
        DataError: root or category missing, ``train/good`` missing or empty, ``test/`` or
            ``test/good`` missing, a defect image without its mask (unless ``skip_bad``).
    """

    def __init__(self, root: str | Path, category: str, skip_bad: bool = False) -> None:
        self.root = Path(root)
        self.category = category
        self.skip_bad = skip_bad
        self.skipped = 0
        self.path = self._category_dir()
        self._train = self._list_train()
        self._test = self._list_test()

    # -- layout --------------------------------------------------------------------------------
    def _category_dir(self) -> Path:
        if not self.root.is_dir():
            raise DataError(
                note(f"dataset root not found: {self.root}", "check --data (the MVTec AD root)")
            )
        path = self.root / self.category
        if path.is_dir():
            return path
        existing = available_categories(self.root)
        detail = f"categories in {self.root}: {', '.join(existing) or '(none)'}"
        close = difflib.get_close_matches(self.category, existing, n=1, cutoff=0.6)
        if close:
            detail += f"; did you mean '{close[0]}'?"
        elif (self.root / "train").is_dir() and self.root.name == self.category:
            detail += f"; {self.root} is a category folder itself: pass its parent as the root"
        raise DataError(note(f"category '{self.category}' not found in {self.root}", detail))

    def _list_train(self) -> list[Sample]:
        folder = self.path / "train" / GOOD
        files = list_images(folder) if folder.is_dir() else []
        if not files:
            what = "has no images" if folder.is_dir() else "is missing"
            raise DataError(
                note(
                    f"training folder {folder} {what}",
                    f"expected good images ({', '.join(IMAGE_SUFFIXES)}) in "
                    "<root>/<category>/train/good/",
                )
            )
        return [Sample(p, 0, GOOD, None) for p in files]

    def _list_test(self) -> list[Sample]:
        test_dir = self.path / "test"
        if not (test_dir / GOOD).is_dir():
            what = "test folder" if not test_dir.is_dir() else "good test folder"
            raise DataError(
                note(
                    f"{what} missing: {test_dir / GOOD}",
                    "expected <root>/<category>/test/good/ and test/<defect>/ folders; "
                    "use a plain image folder (no --category) to train without a test split",
                )
            )
        samples: list[Sample] = []
        for folder in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            files = list_images(folder)
            if not files:
                logger.warning("test folder %s has no images; ignored", folder)
            for image in files:
                sample = self._test_sample(folder.name, image)
                if sample is not None:
                    samples.append(sample)
        return samples

    def _test_sample(self, defect_type: str, image: Path) -> Sample | None:
        if defect_type == GOOD:
            return Sample(image, 0, GOOD, None)
        mask = find_mask(self.path / "ground_truth" / defect_type, image.stem)
        if mask is None:
            expected = self.path / "ground_truth" / defect_type / f"{image.stem}_mask.png"
            self._bad(
                note(
                    f"mask missing for defect image {image}",
                    f"expected {expected}; add the mask or remove the image",
                )
            )
            return None
        return Sample(image, 1, defect_type, mask)

    def _bad(self, message: str) -> None:
        """Raise, or with ``skip_bad`` log and count the bad sample."""
        if not self.skip_bad:
            raise DataError(message)
        self.skipped += 1
        logger.warning("skipping bad sample: %s", message)

    # -- public --------------------------------------------------------------------------------
    def train_good(self) -> list[Sample]:
        """The good training images, sorted by file name."""
        return list(self._train)

    def test(self) -> list[Sample]:
        """The test images (good first, then defect folders alphabetically)."""
        return sorted(self._test, key=lambda s: (s.defect_type != GOOD, s.defect_type, s.path))

    @property
    def defect_types(self) -> list[str]:
        """Sorted names of the defect folders under ``test/`` that hold usable images."""
        return sorted({s.defect_type for s in self._test if s.label == 1})

    def counts(self) -> dict[str, int]:
        """Number of images per split: ``{"train/good": n, "test/good": n, "test/<defect>": n}``."""
        counts = {"train/good": len(self._train)}
        for sample in self.test():
            key = f"test/{sample.defect_type}"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def validate(self) -> MVTecCategory:
        """Decode every image and mask; check each mask has its image's size.

        Slow (reads every file), so it is explicit. With ``skip_bad`` bad samples are dropped.

        Returns:
            self, for chaining.

        Raises:
            DataError: a corrupt file, or a mask whose size differs from its image (both named).
        """
        self._train = [s for s in self._train if self._sample_ok(s)]
        self._test = [s for s in self._test if self._sample_ok(s)]
        if not self._train:
            raise DataError(
                note(
                    f"no readable training image left in {self.path / 'train' / GOOD}",
                    f"all were skipped as bad ({self.skipped} skipped in total)",
                )
            )
        return self

    def _sample_ok(self, sample: Sample) -> bool:
        try:
            check_sample(sample)
        except DataError as exc:
            self._bad(str(exc))
            return False
        return True

    def __repr__(self) -> str:
        return (
            f"MVTecCategory(root={str(self.root)!r}, category={self.category!r}, "
            f"train={len(self._train)}, test={len(self._test)}, skipped={self.skipped})"
        )


def check_sample(sample: Sample) -> None:
    """Decode a sample's image (and mask) and check their sizes agree.

    Raises:
        DataError: corrupt image or mask, or a size mismatch naming both files.
    """
    image_hw = _image_size(sample.path)
    if sample.mask_path is None:
        return
    mask_hw = _image_size(sample.mask_path)
    if mask_hw != image_hw:
        raise DataError(
            note(
                f"mask {sample.mask_path} is {mask_hw[1]}x{mask_hw[0]} but its image "
                f"{sample.path} is {image_hw[1]}x{image_hw[0]} (WxH)",
                "a mask must have exactly its image's size; re-export the mask",
            )
        )


def find_mask(folder: Path, stem: str) -> Path | None:
    """The mask ``<folder>/<stem>_mask.png`` (or another image suffix), or None."""
    preferred = folder / f"{stem}_mask.png"
    if preferred.is_file():
        return preferred
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}_mask{suffix}", folder / f"{stem}_mask{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def available_categories(root: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``root``."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


class ImageFolderSource:
    """A plain folder of good images (training only, no test split).

    Args:
        folder: the folder; images directly inside it are used (not recursive).

    Raises:
        DataError: the folder is missing or holds no image.
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder)
        self.skipped = 0
        files = list_images(self.path)
        if not files:
            detail = f"expected image files ({', '.join(IMAGE_SUFFIXES)}) directly in the folder"
            if (self.path / "train" / GOOD).is_dir():
                detail += f"; {self.path} looks like an MVTec category: pass its parent as --data "
                detail += f"and --category {self.path.name}"
            elif any(p.is_dir() and (p / "train").is_dir() for p in self.path.iterdir()):
                detail += "; this looks like an MVTec root: also pass --category"
            raise DataError(note(f"no images in {self.path}", detail))
        self._train = [Sample(p, 0, GOOD, None) for p in files]

    def train_good(self) -> list[Sample]:
        """All images of the folder, sorted by name, as good samples."""
        return list(self._train)

    @property
    def defect_types(self) -> list[str]:
        """Always empty: a plain folder has no defect folders."""
        return []

    def test(self) -> list[Sample]:
        """Always empty: a plain folder has no labelled test split."""
        return []

    def counts(self) -> dict[str, int]:
        """``{"train/good": n}``."""
        return {"train/good": len(self._train)}

    def validate(self) -> ImageFolderSource:
        """Decode every image; raises DataError on the first corrupt one."""
        for sample in self._train:
            check_sample(sample)
        return self

    def __repr__(self) -> str:
        return f"ImageFolderSource({str(self.path)!r}, images={len(self._train)})"


def split_train_val(
    samples: list[Sample], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Split samples into train and validation sets, reproducibly.

    Args:
        samples: the samples (their order matters for reproducibility; sources sort by name).
        val_fraction: fraction in ``[0, 1)`` sent to validation, rounded; at least one sample
            when there are two or more (and at least one always stays in train).
        seed: the random seed; the same inputs and seed give the same split.

    Returns:
        ``(train, val)``, each in the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(
            note(f"invalid val_fraction {val_fraction}", "expected a value in [0, 1), e.g. 0.2")
        )
    n = len(samples)
    n_val = 0
    if n >= 2:
        n_val = min(max(1, round(n * val_fraction)), n - 1) if val_fraction > 0 else 0
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    return train, val


def load_training_source(data: str | Path, category: str | None, skip_bad: bool = False):
    """The source for ``--data`` / ``--category``.

    Returns:
        ``ImageFolderSource(data)`` when ``category`` is None, else
        ``MVTecCategory(data, category, skip_bad)``.
    """
    if category is None:
        return ImageFolderSource(data)
    return MVTecCategory(data, category, skip_bad=skip_bad)
