"""vlm-ad: explainable visual anomaly detection in images and videos.

The main entry points::

    from vlm_ad import create_backbone, list_backbones, load_image
    backbone = create_backbone("efficientnet-lite0")
    feats = backbone.extract([load_image("part.png")])

Heavy modules (torch models, faiss, open_clip, ...) are imported lazily, so ``import vlm_ad`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from vlm_ad.errors import (
    ConfigError,
    DataError,
    EmptyDatasetError,
    ImageReadError,
    MaskError,
    MissingDependencyError,
    NotFittedError,
    UnknownNameError,
    VlmAdError,
    WeightsNotFoundError,
)
from vlm_ad.types import AnomalyMap, ExemplarHit, Features, Region, Sample

__version__ = "0.1.0"

# name -> module that defines it; imported on first attribute access
_LAZY = {
    "create_backbone": "vlm_ad.backbones",
    "list_backbones": "vlm_ad.backbones",
    "create_detector": "vlm_ad.detectors",
    "list_detectors": "vlm_ad.detectors",
    "load_detector": "vlm_ad.detectors",
    "load_image": "vlm_ad.data",
    "MVTecDataset": "vlm_ad.data",
    "ImageFolder": "vlm_ad.data",
    "TextileDataset": "vlm_ad.data",
    "generate_dataset": "vlm_ad.data",
    "evaluate": "vlm_ad.evaluation.detection",
}

__all__ = [
    "AnomalyMap",
    "ConfigError",
    "DataError",
    "EmptyDatasetError",
    "ExemplarHit",
    "Features",
    "ImageFolder",
    "ImageReadError",
    "MVTecDataset",
    "MaskError",
    "MissingDependencyError",
    "NotFittedError",
    "Region",
    "Sample",
    "TextileDataset",
    "UnknownNameError",
    "VlmAdError",
    "WeightsNotFoundError",
    "__version__",
    "create_backbone",
    "create_detector",
    "evaluate",
    "generate_dataset",
    "list_backbones",
    "list_detectors",
    "load_detector",
    "load_image",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vlm_ad' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
