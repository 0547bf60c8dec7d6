"""Which images a run uses: a category's (train, test) splits and the k normal shots drawn from train."""

from __future__ import annotations

from pathlib import Path

from vlm_ad.data.base import ImageDataset
from vlm_ad.data.mvtec import MVTecDataset
from vlm_ad.data.textile import TextileDataset
from vlm_ad.errors import ConfigError, ImageReadError
from vlm_ad.types import Sample

__all__ = ["TEXTILE", "open_data", "open_train", "select_shots", "shot_indices"]

TEXTILE = "textile"  # the DATA name of the embedded textile benchmark


def open_data(data: str | Path, *, textile_test: int | None = None, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) of an MVTec-layout category folder, or of the textile benchmark when ``data == "textile"``.

    Args:
        data: a category folder (``train/good``, ``test/<type>``, optional ``ground_truth``) or ``"textile"``.
        textile_test: balanced subsample size of the textile test split (None = all 1,800 test images).
        seed: seed of the textile split and subsample.
    """
    if str(data) == TEXTILE:
        return TextileDataset("train", seed=seed), TextileDataset("test", seed=seed, limit_test=textile_test)
    return MVTecDataset(data, "train"), MVTecDataset(data, "test")


def open_train(data: str | Path, *, seed: int = 0) -> tuple[ImageDataset, str]:
    """The normal training images to fit on, and a line saying where they came from.

    ``"textile"``: the benchmark's training split; a folder with ``train/good``: those images (no ``test`` split
    needed to fit); any other folder that holds image files (not looking into sub-folders): all of them, taken as
    normal. Anything else raises the MVTec-layout error of :class:`~vlm_ad.data.mvtec.MVTecDataset`.
    """
    from vlm_ad.data.images import is_image_file
    from vlm_ad.data.mvtec import ImageFolder

    if str(data) == TEXTILE:
        return TextileDataset("train", seed=seed), "the textile benchmark's training split"
    root = Path(data)
    plain = (root.is_dir() and not (root / "train" / "good").is_dir() and not (root / "test").is_dir()
             and any(p.is_file() and is_image_file(p) for p in root.iterdir()))
    if plain:
        return ImageFolder(root, label=0), f"every image file in {root} (no train/good/ there: all taken as normal)"
    return MVTecDataset(root, "train"), str(root / "train" / "good")  # or its layout error, saying what is missing


def shot_indices(train: ImageDataset, shots: int | None, seed: int) -> list[int]:
    """The indices :func:`select_shots` loads (no image is read)."""
    if shots is None:
        return train.normal_indices()
    if shots < 0:
        raise ConfigError(f"--shots must be >= 0 (0 = zero-shot), got {shots}")
    return [] if shots == 0 else train.sample_shots(shots, seed=seed)


def select_shots(train: ImageDataset, shots: int | None, seed: int) -> list[Sample]:
    """All normal training images (``shots=None``), none (0), or ``shots`` of them drawn with ``seed``.

    Every one is read before any fails the call: an :class:`~vlm_ad.errors.ImageReadError` names all the unreadable
    ones at once (a user fixes the folder in one go, not one file per run)."""
    samples, bad = [], []
    for i in shot_indices(train, shots, seed):
        try:
            samples.append(train[i])
        except ImageReadError as exc:
            bad.append(str(exc))
    if len(bad) == 1:
        raise ImageReadError(bad[0])
    if bad:
        shown = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise ImageReadError(f"{len(bad)} of the {len(samples) + len(bad)} normal images to fit on cannot be read; "
                             f"fix or remove them:\n  {shown}")
    return samples
