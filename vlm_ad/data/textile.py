"""The simulated textile benchmark shipped by PyPI ``conformal-clip-data`` (image labels only, no masks).

The package holds ``simulated/nominal`` (1000 normal images), ``simulated/local`` (500 with a local defect)
and ``simulated/global`` (500 with a global defect), all ``textile_XXXX.jpg``. File names repeat across the
three folders (``textile_0008.jpg`` is in each, as three different images), so ``image_id`` always includes
the class folder: ``"nominal/textile_0008.jpg"``.

The split is deterministic for a seed: ``train`` is ``n_train`` nominal images drawn by a seeded permutation,
``test`` is every other nominal image (label 0, defect type ``"good"``) plus all local and global images
(label 1, defect type ``"local"`` / ``"global"``).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Union

import numpy as np

from vlm_ad._deps import require
from vlm_ad.data.base import DatasetItem, ImageDataset
from vlm_ad.data.images import is_image_file
from vlm_ad.errors import ConfigError, EmptyDatasetError

__all__ = ["TextileDataset", "textile_root"]

PathLikeStr = Union[str, PathLike]

#: class folder -> (label, defect_type)
TEXTILE_CLASSES = {"nominal": (0, "good"), "local": (1, "local"), "global": (1, "global")}
DEFAULT_N_TRAIN = 200


def textile_root() -> Path:
    """The ``simulated`` folder of the installed ``conformal-clip-data`` package."""
    pkg = require("conformal_clip_data", "the textile benchmark")
    return Path(pkg.textile_simulated_root())


class TextileDataset(ImageDataset):
    """A seeded split of the simulated textile benchmark; same interface as :class:`MVTecDataset`.

    Masks are None for every image (the benchmark has image labels only), so ``has_masks`` is False.

    Args:
        split: ``"train"`` (normal images only) or ``"test"``.
        n_train: nominal images in the train split (default 200); the others go to the test split.
        seed: seed of the train/test split and of the ``limit_test`` subsample.
        limit_test: keep only this many test images, balanced over the three classes (nominal, local,
            global; a remainder goes to the first classes), drawn with the seed. None keeps all.
        root: a folder with ``nominal/``, ``local/`` and ``global/`` to use instead of the package's.

    Raises:
        MissingDependencyError: ``conformal-clip-data`` is not installed (and no ``root`` is given).
        ConfigError: a bad split, ``n_train`` or ``limit_test``.
        EmptyDatasetError: a class folder is missing or empty.
    """

    normal_masks = False

    def __init__(
        self,
        split: str = "train",
        *,
        n_train: int | None = None,
        seed: int = 0,
        limit_test: int | None = None,
        root: PathLikeStr | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        self.root = Path(root) if root is not None else textile_root()
        self.split = split
        self.seed = seed
        per_class = {name: self._list(name) for name in TEXTILE_CLASSES}
        nominal = per_class["nominal"]
        n_train = DEFAULT_N_TRAIN if n_train is None else n_train
        if isinstance(n_train, bool) or not isinstance(n_train, (int, np.integer)) or not 1 <= n_train < len(nominal):
            raise ConfigError(
                f"n_train must be an integer from 1 to {len(nominal) - 1} (there are {len(nominal)} nominal "
                f"images and the test split needs some), got {n_train!r}"
            )
        self.n_train = int(n_train)
        order = np.random.default_rng(seed).permutation(len(nominal))
        train_idx = set(order[: self.n_train].tolist())
        if split == "train":
            items = [it for i, it in enumerate(nominal) if i in train_idx]
        else:
            groups = {
                "nominal": [it for i, it in enumerate(nominal) if i not in train_idx],
                "local": per_class["local"],
                "global": per_class["global"],
            }
            if limit_test is not None:
                groups = self._limit(groups, limit_test, seed)
            items = [it for name in TEXTILE_CLASSES for it in groups[name]]
        super().__init__(items)

    def _list(self, name: str) -> list[DatasetItem]:
        folder = self.root / name
        if not folder.is_dir():
            raise EmptyDatasetError(
                f"{folder} does not exist; the textile benchmark needs {self.root}/{{nominal,local,global}}/*.jpg"
            )
        files = sorted((p for p in folder.iterdir() if p.is_file() and is_image_file(p)), key=lambda p: p.name)
        if not files:
            raise EmptyDatasetError(f"{folder} holds no images; the textile benchmark needs it non-empty")
        label, dtype = TEXTILE_CLASSES[name]
        return [DatasetItem(f"{name}/{p.name}", p, label, dtype, None) for p in files]

    @staticmethod
    def _limit(groups: dict[str, list[DatasetItem]], limit: int, seed: int) -> dict[str, list[DatasetItem]]:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ConfigError(f"limit_test must be a positive integer or None, got {limit!r}")
        names = list(groups)
        base, extra = divmod(int(limit), len(names))
        rng = np.random.default_rng([seed, 1])
        out = {}
        for j, name in enumerate(names):
            want = min(base + (1 if j < extra else 0), len(groups[name]))
            pick = np.sort(rng.permutation(len(groups[name]))[:want])
            out[name] = [groups[name][i] for i in pick.tolist()]
        return out

    def __repr__(self) -> str:
        return f"TextileDataset(split={self.split!r}, seed={self.seed}: {len(self)} images, types {self.defect_types})"
