"""Detector registry: ``create_detector(name, backbone=..., **kw)``, ``list_detectors()``, ``load_detector(dir)``.

Registered names:
    patchcore   nearest normal patch in a coreset memory bank (full-shot and k-shot)
    padim       per-position Gaussian, Mahalanobis distance
    mutual      zero-shot mutual scoring between unlabelled images (no normal image needed)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlm_ad.detectors.base import Detector, PatchEmbedder
from vlm_ad.errors import ConfigError, DataError
from vlm_ad.registry import Registry

__all__ = ["DETECTORS", "Detector", "PatchEmbedder", "create_detector", "list_detectors", "load_detector"]

DETECTORS: Registry[Detector] = Registry("detector")


@DETECTORS.register("patchcore", description="nearest normal patch in a coreset memory bank (k-shot, full-shot)")
def _patchcore(**kw: Any) -> Detector:
    from vlm_ad.detectors.patchcore import PatchCore

    return PatchCore(**kw)


@DETECTORS.register("padim", description="per-position Gaussian of normal patches, Mahalanobis distance")
def _padim(**kw: Any) -> Detector:
    from vlm_ad.detectors.padim import PaDiM

    return PaDiM(**kw)


@DETECTORS.register("mutual", description="zero-shot: mutual patch scoring between unlabelled test images")
def _mutual(**kw: Any) -> Detector:
    from vlm_ad.detectors.mutual import Mutual

    return Mutual(**kw)


def create_detector(name: str, **kwargs: Any) -> Detector:
    """Build an unfitted detector, e.g. ``create_detector("patchcore", backbone="efficientnet-lite0")``."""
    return DETECTORS.create(name, **kwargs)


def list_detectors(pattern: str | None = None) -> list[str]:
    """Registered detector names."""
    return DETECTORS.names(pattern)


def load_detector(directory: str | Path) -> Detector:
    """Load a detector saved with ``Detector.save`` (``vlm-ad fit --out DIR``)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path, tensor_path = directory / "detector.json", directory / "detector.safetensors"
    if not meta_path.is_file() or not tensor_path.is_file():
        raise DataError(f"{directory} is not a saved model: expected detector.json and detector.safetensors "
                        "(create one with 'vlm-ad fit DATA --out DIR')")
    try:
        meta = json.loads(meta_path.read_text())
        emb = meta["embedder"]
        det = create_detector(meta["detector"], backbone=emb["backbone"], layers=emb["layers"],
                              image_size=emb["image_size"], pool=emb["pool"],
                              **{k: v for k, v in meta["hyper"].items() if k not in ("layers", "image_size", "pool")})
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{meta_path} is malformed ({exc!r}); re-create the model with 'vlm-ad fit'") from exc
    det._load_state(load_file(str(tensor_path)), meta, directory)
    det.threshold_ = meta.get("threshold")
    return det
