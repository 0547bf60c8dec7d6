"""Shared fixtures: a tiny MVTec-layout dataset of small generated PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _write(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if mode:
        im = im.convert(mode)
    im.save(path)
    return path


def build_mvtec(root: Path, *, unmasked_defect: bool = False, seed: int = 0) -> Path:
    """Write a tiny MVTec-layout category under ``root`` and return ``root``.

    train/good: 000.png RGB 48x48, 001.png grayscale 48x48, 002.png RGB 56x40 (other size), 003.jpg RGB 48x48
    test/good: 000.png RGB, 001.png grayscale
    test/scratch: 000.png RGB 48x48, 001.png RGBA 32x40 -- masks ground_truth/scratch/<stem>_mask.png
    test/hole: 000.png RGB 48x48 -- mask ground_truth/hole/000.png (the fallback name)
    test/stain/000.png without a mask when ``unmasked_defect``.
    """
    rng = np.random.default_rng(seed)

    def rgb(h: int, w: int) -> np.ndarray:
        return rng.integers(60, 200, size=(h, w, 3), dtype=np.uint8)

    _write(root / "train/good/000.png", rgb(48, 48))
    _write(root / "train/good/001.png", rgb(48, 48)[..., 0])
    _write(root / "train/good/002.png", rgb(40, 56))
    _write(root / "train/good/003.jpg", rgb(48, 48))
    _write(root / "test/good/000.png", rgb(48, 48))
    _write(root / "test/good/001.png", rgb(48, 48)[..., 0])
    mask = np.zeros((48, 48), np.uint8)
    mask[10:20, 5:30] = 255
    _write(root / "test/scratch/000.png", rgb(48, 48))
    _write(root / "ground_truth/scratch/000_mask.png", mask)
    rgba = np.concatenate([rgb(32, 40), np.full((32, 40, 1), 255, np.uint8)], axis=2)
    _write(root / "test/scratch/001.png", rgba)
    _write(root / "ground_truth/scratch/001_mask.png", mask[:32, :40])
    _write(root / "test/hole/000.png", rgb(48, 48))
    _write(root / "ground_truth/hole/000.png", mask)
    if unmasked_defect:
        _write(root / "test/stain/000.png", rgb(48, 48))
    return root


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    """A tiny MVTec-layout category where every defective image has a mask."""
    return build_mvtec(tmp_path / "toy")


@pytest.fixture
def write_image():
    """``write_image(path, array, mode=None)``: save an array with Pillow (optionally converted to ``mode``)."""
    return _write


def copy_test_images(category: Path, dest: Path) -> Path:
    """Copy a category's test images flat into ``dest`` as ``<type>_<name>.png`` (a folder to detect or report on)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted((category / "test").rglob("*.png")):
        (dest / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    return dest


def build_tiny_model(root: Path, *, n_test_good: int, n_test_per_type: int) -> tuple[Path, Path]:
    """A synthetic 64 px brick category (hole defects) and a PatchCore model fitted on it and saved with threshold
    0.5: returns (category folder, model folder). For the report, engine and chat tests."""
    from vlm_ad.data import generate_dataset, open_data
    from vlm_ad.evaluation.run import fit_detector

    cat = generate_dataset(root / "data", sources=("brick",), n_train=3, n_test_good=n_test_good,
                           n_test_per_type=n_test_per_type, types=("hole",), image_size=64, seed=0)["brick"]
    det, _ = fit_detector(open_data(cat)[0], detector="patchcore", backbone="efficientnet-lite0", coreset=1.0,
                          image_size=64)
    det.set_threshold(0.5)
    det.save(root / "model")
    return cat, root / "model"
