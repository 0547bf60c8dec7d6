"""Datasets in the MVTec AD folder layout, and plain folders of unlabelled images.

The MVTec AD layout (one category)::

    <root>/train/good/*.png                      normal training images
    <root>/validation/good/*.png                 optional normal validation images
    <root>/test/good/*.png                       normal test images
    <root>/test/<defect type>/*.png              anomalous test images, one folder per defect type
    <root>/ground_truth/<defect type>/<stem>_mask.png   optional masks (``<stem>.png`` accepted too)

Files are listed once at construction (sorted by name, so the order is deterministic); pixels are read only
when a sample is asked for. Images of different sizes in one folder are fine.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Union

from vlm_ad.data.base import DatasetItem, ImageDataset
from vlm_ad.data.images import IMAGE_EXTENSIONS, is_image_file
from vlm_ad.errors import ConfigError, EmptyDatasetError, MaskError

__all__ = ["MVTEC_LAYOUT", "ImageFolder", "MVTecDataset"]

PathLikeStr = Union[str, PathLike]

SPLITS = ("train", "validation", "test")

MVTEC_LAYOUT = (
    "expected the MVTec AD layout: <root>/train/good/*.png, optional <root>/validation/good/*.png, "
    "<root>/test/<defect type>/*.png (normal test images in test/good) and optional "
    "<root>/ground_truth/<defect type>/<stem>_mask.png; image files end in " + ", ".join(IMAGE_EXTENSIONS)
)


def _list_images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and is_image_file(p)), key=lambda p: p.name)


def _list_subfolders(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _mask_files(folder: Path) -> dict[str, Path]:
    """Image files of a ground-truth folder by lower-cased name (empty when the folder is missing)."""
    if not folder.is_dir():
        return {}
    return {p.name.lower(): p for p in folder.iterdir() if p.is_file() and is_image_file(p)}


def _find_mask(files: dict[str, Path], stem: str) -> Path | None:
    """``<stem>_mask.png``, then ``<stem>.png``, then the same two names with the other image extensions."""
    stem = stem.lower()
    for ext in IMAGE_EXTENSIONS:
        for name in (f"{stem}_mask{ext}", f"{stem}{ext}"):
            if name in files:
                return files[name]
    return None


class MVTecDataset(ImageDataset):
    """One split of a dataset in the MVTec AD layout, read lazily.

    Samples have ``image_id`` = the path relative to ``root`` (e.g. ``"test/crack/000.png"``), ``label`` 0 for
    ``good`` and 1 otherwise, ``defect_type`` = the folder name, and ``mask`` = the bool mask for defective
    images with a mask file, all-False for ``good`` images, None for defective images without a mask.

    Args:
        root: the category folder (the one holding ``train/`` and ``test/``), or the dataset folder when
            ``category`` is given.
        split: ``"train"`` (``train/good``), ``"validation"`` (``validation/good``) or ``"test"`` (every
            ``test/<type>`` folder).
        category: optional sub-folder of ``root`` to use as the category folder.
        require_masks: raise :class:`MaskError` at construction when a defective test image has no mask.

    Raises:
        EmptyDatasetError: ``root`` is missing, is not in the MVTec layout, or a split folder holds no images
            (the message names the folder and the expected layout).
        ConfigError: an unknown split.
        MaskError: ``require_masks`` and a defective image lacks a mask.
    """

    def __init__(
        self,
        root: PathLikeStr,
        split: str = "train",
        *,
        category: str | None = None,
        require_masks: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        root = Path(root)
        if category is not None:
            root = root / category
        self.root = root
        self.split = split
        if not root.exists():
            raise EmptyDatasetError(f"dataset root {root} does not exist; {MVTEC_LAYOUT}")
        if not root.is_dir():
            raise EmptyDatasetError(f"dataset root {root} is not a folder; {MVTEC_LAYOUT}")
        if not (root / "train" / "good").is_dir() and not (root / "test").is_dir():
            raise EmptyDatasetError(f"{root} has neither train/good/ nor test/; {MVTEC_LAYOUT}")
        items = self._index_test() if split == "test" else self._index_good(root / split / "good")
        super().__init__(items)
        if require_masks:
            missing = [it.image_id for it in self.items if it.label == 1 and it.mask_path is None]
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                raise MaskError(
                    f"{len(missing)} defective image(s) under {root} have no mask: {shown}; expected "
                    f"{root}/ground_truth/<defect type>/<stem>_mask.png (or <stem>.png)"
                )

    def _image_id(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _index_good(self, folder: Path) -> list[DatasetItem]:
        if not folder.is_dir():
            raise EmptyDatasetError(
                f"{folder} does not exist, so {self.root} has no {self.split!r} split; {MVTEC_LAYOUT}"
            )
        files = _list_images(folder)
        if not files:
            raise EmptyDatasetError(f"{folder} holds no images; {MVTEC_LAYOUT}")
        return [DatasetItem(self._image_id(p), p, 0, "good", None) for p in files]

    def _index_test(self) -> list[DatasetItem]:
        test = self.root / "test"
        if not test.is_dir():
            raise EmptyDatasetError(f"{test} does not exist, so {self.root} has no 'test' split; {MVTEC_LAYOUT}")
        folders = _list_subfolders(test)
        if not folders:
            raise EmptyDatasetError(f"{test} has no defect-type folders (test/good, test/<type>); {MVTEC_LAYOUT}")
        items: list[DatasetItem] = []
        for folder in folders:
            files = _list_images(folder)
            if not files:
                raise EmptyDatasetError(
                    f"{folder} holds no images; add images or remove the empty folder ({MVTEC_LAYOUT})"
                )
            dtype = folder.name
            if dtype == "good":
                items += [DatasetItem(self._image_id(p), p, 0, "good", None) for p in files]
                continue
            masks = _mask_files(self.root / "ground_truth" / dtype)
            items += [DatasetItem(self._image_id(p), p, 1, dtype, _find_mask(masks, p.stem)) for p in files]
        return items

    def __repr__(self) -> str:
        return f"MVTecDataset({str(self.root)!r}, split={self.split!r}: {len(self)} images, types {self.defect_types})"


class ImageFolder(ImageDataset):
    """Unlabelled images from a folder (sorted by name) or a single file, for ``detect``.

    ``image_id`` is the path relative to the folder (the file name for a single file). Samples have
    ``label``/``defect_type``/``mask`` None unless ``label`` is given (``label=0`` marks the images as normal,
    so :meth:`sample_shots` can draw from them; their masks are then all-False).

    Args:
        path: a folder of images or one image file.
        recursive: also list images in sub-folders.
        label: optional label (0 or 1) for every image.

    Raises:
        EmptyDatasetError: ``path`` does not exist or holds no image files.
    """

    def __init__(self, path: PathLikeStr, *, recursive: bool = False, label: int | None = None) -> None:
        if label not in (None, 0, 1):
            raise ConfigError(f"label must be None, 0 or 1, got {label!r}")
        path = Path(path)
        self.root = path
        if not path.exists():
            raise EmptyDatasetError(f"{path} does not exist; pass a folder of images or an image file")
        dtype = None if label is None else ("good" if label == 0 else "anomaly")
        if path.is_file():
            pairs = [(path.name, path)]
        else:
            found = path.rglob("*") if recursive else path.iterdir()
            files = sorted(
                (p for p in found if p.is_file() and is_image_file(p) and not _hidden(p.relative_to(path))),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            if not files:
                where = "or its sub-folders " if recursive else ""
                raise EmptyDatasetError(
                    f"{path} {where}holds no image files (looked for {', '.join(IMAGE_EXTENSIONS)})"
                    + ("" if recursive else "; sub-folders are not looked into: pass them as well (from Python: "
                                            "recursive=True)")
                )
            pairs = [(p.relative_to(path).as_posix(), p) for p in files]
        super().__init__([DatasetItem(i, p, label, dtype, None) for i, p in pairs])

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}: {len(self)} images)"


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)
