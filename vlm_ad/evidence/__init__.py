"""Evidence: the measured facts behind one detection, each with a citable id.

::

    from vlm_ad.evidence import build_evidence
    ev = build_evidence(amap, image, namer=None, load_exemplar=None)
    ev.to_json()    # {"score": {...}, "regions": [{"id": "R1", "area_pct": 1.2, "location": "upper left", ...}], ...}

Ids: ``S`` = image score vs threshold, ``R1..`` = regions (highest peak first), ``E1..`` = nearest normal exemplars.
"""

from __future__ import annotations

from vlm_ad.evidence.build import Namer, build_evidence, region_shape
from vlm_ad.evidence.types import (
    Contrast,
    DefectNameEvidence,
    Evidence,
    RegionEvidence,
    ScoreEvidence,
    Shape,
)

__all__ = [
    "Contrast",
    "DefectNameEvidence",
    "Evidence",
    "Namer",
    "RegionEvidence",
    "ScoreEvidence",
    "Shape",
    "build_evidence",
    "region_shape",
]
