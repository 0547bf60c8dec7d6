"""The typed nouns that pass between stages. Images are ``numpy.uint8`` RGB arrays of shape (H, W, 3).

Higher anomaly scores always mean *more anomalous*.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AnomalyMap", "ExemplarHit", "Features", "Region", "Sample"]


@dataclass
class Sample:
    """One image with its optional ground truth.

    Attributes:
        image: (H, W, 3) uint8 RGB pixels.
        image_id: a stable id (usually the path relative to the dataset root).
        label: 0 normal, 1 anomalous, None unknown.
        defect_type: the defect folder name ("good" for normal images), or None.
        mask: (H, W) bool ground-truth mask, or None when there is none.
        path: where the image came from, if a file.
    """

    image: np.ndarray
    image_id: str
    label: int | None = None
    defect_type: str | None = None
    mask: np.ndarray | None = None
    path: Path | None = None


@dataclass
class Features:
    """Patch features of a batch, one map per layer.

    Attributes:
        layers: layer name -> (B, C, h, w) float tensor (a ``torch.Tensor``).
        input_size: (H, W) of the preprocessed input the backbone saw.
    """

    layers: dict[str, Any]
    input_size: tuple[int, int]

    def __len__(self) -> int:
        return next(iter(self.layers.values())).shape[0]


@dataclass(frozen=True)
class ExemplarHit:
    """A retrieval hit: the normal exemplar patch nearest to a query patch.

    Attributes:
        image_id: id of the normal image holding the exemplar patch.
        row: patch row in that image's feature grid.
        col: patch column in that image's feature grid.
        distance: feature distance (lower = more similar).
        id: the citable evidence id ("E1", ...) once the hit is cited as evidence; empty before.
    """

    image_id: str
    row: int
    col: int
    distance: float
    id: str = ""


@dataclass
class Region:
    """A connected anomalous region of a map.

    Attributes:
        id: 1-based region id within its image.
        box: (x0, y0, x1, y1) pixel box, end-exclusive.
        area_fraction: region pixels / image pixels.
        peak: maximum anomaly value inside the region.
        centroid: (x, y) in pixels.
    """

    id: int
    box: tuple[int, int, int, int]
    area_fraction: float
    peak: float
    centroid: tuple[float, float]


@dataclass
class AnomalyMap:
    """What a detector says about one image.

    Attributes:
        image_id: id of the scored image.
        score: image-level anomaly score (higher = more anomalous).
        map: (H, W) float32 anomaly map at the input image's resolution.
        hits: retrieval hits behind the score, most anomalous patch first.
        threshold: decision threshold on ``score`` when the detector has one.
        regions: connected regions above the pixel threshold, when computed.
    """

    image_id: str
    score: float
    map: np.ndarray
    hits: list[ExemplarHit] = field(default_factory=list)
    threshold: float | None = None
    regions: list[Region] = field(default_factory=list)

    @property
    def label(self) -> int | None:
        """1 if ``score`` exceeds ``threshold``, 0 if not, None without a threshold."""
        return None if self.threshold is None else int(self.score > self.threshold)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable summary (the map itself is left out)."""
        out = {k: v for k, v in asdict(self).items() if k != "map"}
        out["label"] = self.label
        out["map_shape"] = list(self.map.shape)
        return out
