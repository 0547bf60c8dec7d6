"""The evidence nouns: what was measured about one image, every item with an id a claim can cite.

Citable ids: ``S`` (image score vs threshold), ``R1``, ``R2``, ... (regions), ``E1``, ``E2``, ... (nearest normal
exemplars), and ``P1`` (the strongest response of a normal image, below the threshold). :meth:`Evidence.numbers`
lists every number an explanation may quote.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vlm_ad.types import ExemplarHit

__all__ = ["Contrast", "DefectNameEvidence", "Evidence", "RegionEvidence", "ScoreEvidence", "Shape"]


@dataclass
class Shape:
    """Geometry of a region.

    Attributes:
        elongation: major / minor principal axis length (1 = round, >= 3 = line-like).
        orientation_deg: angle of the major axis in degrees, 0 = horizontal, 90 = vertical (image rows go down).
        orientation: the angle in words ("horizontal", "vertical", "diagonal (upper left to lower right)", ...),
            or "none" for round regions.
        description: "line-like", "elongated", "compact" or "irregular".
    """

    elongation: float
    orientation_deg: float
    orientation: str
    description: str


@dataclass
class Contrast:
    """How a region differs from its reference pixels.

    Attributes:
        reference: ``"exemplar"`` (the matching patch of the nearest normal exemplar) or ``"ring"`` (a ring
            around the region in the same image, used when the exemplar image is not available).
        reference_id: the exemplar image id, or "ring".
        intensity_delta: mean grey level of the region minus that of the reference, in 0-255 units.
        texture_ratio: mean gradient magnitude in the region / in the reference (> 1 = rougher, < 1 = smoother).
        words: the contrast in words, e.g. "darker, rougher".
    """

    reference: str
    reference_id: str
    intensity_delta: float
    texture_ratio: float
    words: str


@dataclass
class DefectNameEvidence:
    """A defect name given by a namer (labelled-defect library or CLIP prompts).

    Attributes:
        name: the defect type name.
        confidence: the namer's confidence in [0, 1].
        example_id: the library example the region resembles.
        distance: distance to that example.
        explanation: the namer's own one-line reason.
    """

    name: str
    confidence: float
    example_id: str
    distance: float
    explanation: str = ""


@dataclass
class RegionEvidence:
    """One connected region above the threshold.

    Attributes:
        id: citable id, ``"R1"`` for the region with the highest peak.
        box: (x0, y0, x1, y1) pixel box, end-exclusive.
        area_pct: region area in % of the image.
        peak: maximum anomaly value inside the region.
        centroid: (x, y) in pixels.
        location: 3x3-grid word of the centroid ("upper left", "centre", ...).
        shape: geometry.
        contrast: intensity/texture contrast against the exemplar patch or the surrounding ring.
        defect: the namer's defect name, when a namer was given.
        core_pct: area in % of the image of the region's core, the connected pixels around its peak above
            :data:`~vlm_ad.evidence.build.CORE_LEVEL` of the way from the map's median to the peak: the estimate of
            the defect's own extent (the map spreads a defect over more pixels than it covers, so the region
            above the detection threshold is larger); None when the core was not measured.
        size_pct: the estimated area of the defect itself, in % of the image: the region's effective area (its map
            above the median, summed, over its peak) less the same of the map the detector draws for one anomalous
            patch at this image's shape (its point spread, which even a defect smaller than a patch fills), at least
            0 (:func:`~vlm_ad.evidence.build.defect_share`); the size word is said of it. None when not measured.
    """

    id: str
    box: tuple[int, int, int, int]
    area_pct: float
    peak: float
    centroid: tuple[float, float]
    location: str
    shape: Shape
    contrast: Contrast
    defect: DefectNameEvidence | None = None
    core_pct: float | None = None
    size_pct: float | None = None

    def size_word(self) -> str:
        """``small``/``medium``/``large`` (:func:`vlm_ad.vocabulary.size_word`) of the defect's estimated area
        (``size_pct``) when measured, else of the core, else of the whole region: the word every reasoner says."""
        from vlm_ad.vocabulary import size_word

        pct = next(v for v in (self.size_pct, self.core_pct, self.area_pct) if v is not None)
        return size_word(pct / 100)


@dataclass
class ScoreEvidence:
    """The image-level decision (id ``S``).

    Attributes:
        score: image anomaly score (higher = more anomalous).
        threshold: decision threshold, or None when the detector has none.
        margin: score - threshold (None without a threshold).
        ratio: score / threshold (None without a threshold).
        above: whether the score exceeds the threshold (None without a threshold).
    """

    score: float
    threshold: float | None
    margin: float | None
    ratio: float | None
    above: bool | None


@dataclass
class Evidence:
    """Everything measured about one image. ``to_json`` gives a plain dict; ``masks`` stay in memory only.

    Attributes:
        image_id: id of the image.
        image_size: (width, height) in pixels.
        score: the image-level decision.
        regions: regions above the threshold, highest peak first.
        exemplars: nearest normal exemplars (hits with their citable ids ``E1``, ...), most anomalous patch first.
        notes: caveats a reader should know (e.g. "no threshold").
        peak: only when the score is not above the threshold: the strongest response of the map, id ``P1`` (the
            half-maximum component around the map's maximum; see :func:`~vlm_ad.evidence.build.build_evidence`).
            It is not a detection; it says where and how large the most anomalous-looking spot is, for a
            question that presupposes a defect ("where is it?").
        masks: region id -> (H, W) bool pixel mask (not serialised).
    """

    image_id: str
    image_size: tuple[int, int]
    score: ScoreEvidence
    regions: list[RegionEvidence] = field(default_factory=list)
    exemplars: list[ExemplarHit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    peak: RegionEvidence | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def region(self, region_id: str) -> RegionEvidence | None:
        """The region with id ``region_id`` (e.g. "R1"), or None."""
        return next((r for r in self.regions if r.id == region_id), None)

    @property
    def ids(self) -> set[str]:
        """Every citable evidence id."""
        peak = {self.peak.id} if self.peak else set()
        return {"S"} | {r.id for r in self.regions} | {e.id for e in self.exemplars} | peak

    def numbers(self) -> list[float]:
        """Every number an explanation may quote (scores, areas, contrasts, distances, counts, box corners)."""
        out: list[float] = [len(self.regions), len(self.exemplars), *self.image_size]
        s = self.score
        out += [v for v in (s.score, s.threshold, s.margin, s.ratio) if v is not None]
        for r in self.regions + ([self.peak] if self.peak else []):
            c, sh = r.contrast, r.shape
            out += [r.area_pct, r.peak, *r.box, *r.centroid, sh.elongation, sh.orientation_deg,
                    c.intensity_delta, abs(c.intensity_delta), c.texture_ratio]
            out += [v for v in (r.core_pct, r.size_pct) if v is not None]
            if r.defect:
                out += [r.defect.confidence, 100 * r.defect.confidence, r.defect.distance]
        out += [e.distance for e in self.exemplars] + [v for e in self.exemplars for v in (e.row, e.col)]
        return [float(v) for v in out]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (lists instead of tuples, no masks)."""
        out = asdict(self)
        out.pop("masks")
        # each region's size word beside its numbers, so that a language model says the word the rule gives (not
        # for the peak P1 of a normal image: a response below the threshold has no extent worth a word)
        for d, r in zip(out["regions"], self.regions):
            d["size"] = r.size_word()
        if out["peak"] is None:  # only a normal image has one; other records keep their keys
            out.pop("peak")
        out["exemplars"] = [{"id": e.pop("id"), **e} for e in out["exemplars"]]  # the citable id first
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evidence:
        """Rebuild evidence from :meth:`to_json` output (the pixel masks are not kept there)."""
        regions = [_region_from_json(r) for r in data.get("regions", [])]
        peak = _region_from_json(data["peak"]) if data.get("peak") else None
        return cls(data["image_id"], tuple(data["image_size"]), ScoreEvidence(**data["score"]), regions,
                   [ExemplarHit(**e) for e in data.get("exemplars", [])], list(data.get("notes", [])), peak)


def _region_from_json(r: dict[str, Any]) -> RegionEvidence:
    return RegionEvidence(r["id"], tuple(r["box"]), r["area_pct"], r["peak"], tuple(r["centroid"]), r["location"],
                          Shape(**r["shape"]), Contrast(**r["contrast"]),
                          DefectNameEvidence(**r["defect"]) if r.get("defect") else None, r.get("core_pct"),
                          r.get("size_pct"))
