"""The lazy dataset base: a sorted list of lightweight records, images read only when a sample is asked for."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vlm_ad.data.images import load_image, load_mask
from vlm_ad.errors import ConfigError, DataError
from vlm_ad.types import Sample

__all__ = ["DatasetItem", "ImageDataset"]


@dataclass(frozen=True)
class DatasetItem:
    """One indexed image, before anything is read.

    Attributes:
        image_id: stable id (the path relative to the dataset root, with ``/`` separators).
        path: the image file.
        label: 0 normal, 1 anomalous, None unknown.
        defect_type: the defect folder name ("good" for normal images), or None.
        mask_path: the ground-truth mask file, or None when there is none.
    """

    image_id: str
    path: Path
    label: int | None
    defect_type: str | None
    mask_path: Path | None = None


class ImageDataset:
    """Base of the datasets: ``items`` are indexed at construction, pixels are read on ``__getitem__``.

    Subclasses fill ``self.items`` (sorted, deterministic) and may set ``normal_masks`` to False when normal
    images should get ``mask=None`` rather than an all-False mask.
    """

    #: give normal (label 0) images an all-False mask
    normal_masks: bool = True

    def __init__(self, items: Sequence[DatasetItem]) -> None:
        self.items: list[DatasetItem] = list(items)
        self.skipped: list[tuple[Path, str]] = []

    # ------------------------------------------------------------------ sequence protocol
    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"{type(self).__name__} indices must be integers, not {type(index).__name__}")
        n = len(self.items)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {type(self).__name__} of length {n}")
        return self.load(self.items[i])

    def __iter__(self) -> Iterator[Sample]:
        return self.iter_samples(on_error="raise")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, defect types {self.defect_types})"

    # ------------------------------------------------------------------ loading
    def load(self, item: DatasetItem) -> Sample:
        """Read one record into a :class:`~vlm_ad.types.Sample` (raises ImageReadError / MaskError)."""
        image = load_image(item.path)
        mask: np.ndarray | None = None
        if item.mask_path is not None:
            mask = load_mask(item.mask_path, image.shape[:2])
        elif item.label == 0 and self.normal_masks:
            mask = np.zeros(image.shape[:2], dtype=bool)
        return Sample(
            image=image,
            image_id=item.image_id,
            label=item.label,
            defect_type=item.defect_type,
            mask=mask,
            path=item.path,
        )

    def iter_samples(self, on_error: str = "raise") -> Iterator[Sample]:
        """Yield every sample in order.

        Args:
            on_error: ``"raise"`` stops at the first unreadable image or mask; ``"skip"`` leaves it out and
                records ``(path, reason)`` in :attr:`skipped` (reset when the iteration starts).
        """
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        return self._iter(on_error)

    def _iter(self, on_error: str) -> Iterator[Sample]:
        self.skipped = []
        for item in self.items:
            try:
                sample = self.load(item)
            except DataError as exc:
                if on_error == "raise":
                    raise
                self.skipped.append((item.path, str(exc)))
                continue
            yield sample

    # ------------------------------------------------------------------ views
    @property
    def labels(self) -> list[int | None]:
        """The label of every item, in order (no pixels are read)."""
        return [it.label for it in self.items]

    @property
    def image_ids(self) -> list[str]:
        """The id of every item, in order."""
        return [it.image_id for it in self.items]

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect types present (``"good"`` included when there are normal images)."""
        return sorted({it.defect_type for it in self.items if it.defect_type is not None})

    @property
    def has_masks(self) -> bool:
        """True when the split holds anomalous images and every one of them has a mask file."""
        bad = [it for it in self.items if it.label == 1]
        return bool(bad) and all(it.mask_path is not None for it in bad)

    def mask_problems(self) -> list[str]:
        """One line per anomalous image whose mask is missing, unreadable or of another size than the image, read
        from the files' headers (fast, before any fit). Pixel metrics need none of these."""
        from PIL import Image

        problems = []
        for it in self.items:
            if it.label != 1:
                continue
            if it.mask_path is None:
                problems.append(f"{it.image_id}: no mask file (expected ground_truth/<type>/<stem>_mask.png)")
                continue
            try:
                with Image.open(it.path) as im, Image.open(it.mask_path) as mk:
                    if im.size != mk.size:
                        problems.append(f"{it.image_id}: mask {it.mask_path.name} is {mk.size[0]} x {mk.size[1]}, "
                                        f"the image {im.size[0]} x {im.size[1]}")
            except OSError as exc:
                problems.append(f"{it.image_id}: cannot read it or its mask ({exc})")
        return problems

    def drop_masks(self) -> None:
        """Forget every mask file (samples then carry ``mask=None``), e.g. when some are unusable."""
        self.items = [replace(it, mask_path=None) for it in self.items]

    def normal_indices(self) -> list[int]:
        """Indices of the items labelled normal (0)."""
        return [i for i, it in enumerate(self.items) if it.label == 0]

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """A dataset of the same class holding only ``items[i]`` for ``i`` in ``indices`` (in that order)."""
        idx = np.asarray(indices)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ConfigError(f"subset indices must be integers, got dtype {idx.dtype}")
        n = len(self.items)
        chosen = []
        for i in idx.reshape(-1).tolist():
            if not -n <= i < n:
                raise IndexError(f"subset index {i} out of range for {type(self).__name__} of length {n}")
            chosen.append(self.items[i])
        out = copy.copy(self)
        out.items = chosen
        out.skipped = []
        return out

    def sample_shots(self, k: int, seed: int = 0) -> list[int]:
        """Indices of ``k`` normal images drawn without replacement with ``numpy.random.default_rng(seed)``.

        The draw is a seeded permutation of the normal images, so for one seed the shots for ``k`` are
        contained in the shots for any larger ``k``. The indices come back sorted; use
        ``[ds[i] for i in ds.sample_shots(k)]`` for the samples or ``ds.subset(...)`` for a lazy view.

        Raises:
            ConfigError: ``k`` < 1 or more than the normal images available.
        """
        normal = self.normal_indices()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k (the number of shots) must be a positive integer, got {k!r}")
        if k > len(normal):
            raise ConfigError(
                f"asked for {k} normal shots but {type(self).__name__} has only {len(normal)} normal images; "
                f"use k <= {len(normal)}"
            )
        order = np.random.default_rng(seed).permutation(len(normal))[: int(k)]
        return sorted(normal[i] for i in order.tolist())
