"""Defect naming from a labelled-defect library: a detected region is named by its nearest labelled regions.

A :class:`DefectLibrary` stores labelled defect regions (from MVTec-layout ``test/<type>`` folders with masks,
or from a user's own examples). Each region is described by

* interpretable **descriptors** (:data:`DESCRIPTORS`: log area, elongation, components, intensity / colour /
  texture contrast against a ring around the region, compactness, extent, ...), standardised with the
  library's own mean and spread, and optionally
* **deep** features: DINOv2-S blocks 5 + 7 averaged over the region, minus their average over the ring.

In ``patches`` mode every DINOv2 patch a region covers votes for the label of its nearest patch among the examples'
(weights ``coverage / (distance + eps)``): robust to a region cut from a blurred map, whose outline is not the
defect's. ``patches+cells`` (the default) adds the votes of the region's strongest cells of the detector's map in
efficientnet-lite0 features (PatchCore's default embedding: what the default detector itself saw there) against the
examples' cells, each kind's votes as shares of its own sum. Otherwise :meth:`DefectLibrary.name` votes among the
``k`` nearest library regions (weights ``1 / (distance + eps)``) and returns a :class:`DefectName` whose
``explanation`` cites the measured descriptors and the library example the region resembles, e.g. ``"named hole:
round, elongation 1.2, 0.18 darker than its surroundings; like test/hole/012.png"``. Distances are lower-is-closer.
``features="combined"`` adds the two distances, each divided by its median over library pairs so neither dominates
by scale.

A detected region is cut from the detector's map, which spreads a defect (upsampled, smoothed patch distances), so
it is rounder and smoother than the ground-truth mask of a library example. Every example is therefore also described
through the **map lens** (:func:`map_lens`: its mask blurred and cut at its core level, as a map shows a defect), and
``name(..., from_map=True)`` (what the evidence of a detection asks) compares with those descriptors.

A library is saved as ``library.json`` + ``library.safetensors`` (atomic writes, no pickle).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.artifacts import read_artifact, write_meta
from vlm_ad.errors import ConfigError, DataError, MaskError

__all__ = ["DESCRIPTORS", "FEATURE_MODES", "MAP_LENS", "CellEncoder", "DefectLibrary", "DefectName", "map_lens",
           "region_descriptors"]

DESCRIPTORS = (
    "log_area",  # log of the region's area fraction
    "elongation",  # sqrt of the ratio of the principal second moments (1 = round)
    "components",  # number of connected components
    "intensity_contrast",  # mean grey inside minus mean grey in the ring, in [-1, 1] (negative = darker)
    "colour_contrast",  # distance between the mean chroma inside and in the ring, in [0, 1]
    "texture_contrast",  # log ratio of mean gradient magnitude inside vs in the ring
    "inner_spread",  # grey-level standard deviation inside, in [0, 1]
    "compactness",  # 4 pi area / perimeter^2 of the largest component (1 = disc)
    "extent",  # area / bounding-box area of the whole region
    "solidity",  # area / convex-hull area of the largest component
    "edge_contrast",  # mean gradient on the region boundary minus in the ring, in grey / 255
)
FEATURE_MODES = ("descriptors", "deep", "combined", "patches", "patches+cells")
#: the features a new library uses unless told (``vlm-ad library add``, ``vlm-ad eval --qa``): see DefectLibrary
DEFAULT_FEATURES = "patches+cells"
#: a region's cells that vote in ``patches`` mode: those covered at least this share of the best-covered cell
PATCH_COVER = 0.25
DEEP_LAYERS = ("block5", "block7")
#: ``patches+cells`` mode: the efficientnet-lite0 cells (PatchCore's default embedding) of a region's strongest map
#: response that vote, besides its DINOv2 patches
TOP_CELLS = 5
_FORMAT = 1  # of library.json (see vlm_ad.artifacts)
#: sigma of the map lens's blur, as a share of the image's longer side: chosen for the type answers on the synthetic
#: dev suite (magnetic_tile held out) among 0.0125, 0.025 and 0.04; 0.06, tried after, did as well (within 2 of about
#: 160 questions: eval/results/qa_rules.md)
MAP_LENS = 0.04
_EPS = 1e-6


@dataclass
class DefectName:
    """The name given to one region by a :class:`DefectLibrary`.

    Attributes:
        name: the winning defect label.
        confidence: its share of the distance-weighted vote among the ``k`` nearest examples, in (0, 1].
        example_id: the nearest library example carrying that label.
        distance: distance to that example (lower = more similar).
        descriptors: the region's raw (unstandardised) descriptors, by name.
        explanation: one sentence citing the descriptors and the example.
    """

    name: str
    confidence: float
    example_id: str
    distance: float
    descriptors: dict[str, float]
    explanation: str
    votes: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ descriptors
def _check_pair(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise DataError(f"expected a uint8 RGB image (H, W, 3), got {img.dtype} {img.shape}; "
                        "read files with vlm_ad.data.load_image")
    m = np.asarray(mask).astype(bool)
    if m.shape != img.shape[:2]:
        raise MaskError(f"region mask shape {m.shape} does not match the image {img.shape[:2]}; resize the mask")
    if not m.any():
        raise MaskError("the region mask is empty; give at least one True pixel")
    return img, m


def _ring(mask: np.ndarray) -> np.ndarray:
    """Pixels around the region: a dilation whose width grows with the region's size, minus the region."""
    from scipy import ndimage

    width = int(np.clip(math.sqrt(mask.sum()) / 2, 3, 25))
    ring = ndimage.binary_dilation(mask, iterations=width) & ~mask
    return ring if ring.any() else ~mask if (~mask).any() else mask


def _moments(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        return 1.0
    ev = np.linalg.eigvalsh(np.cov(np.stack([xs, ys]).astype(float)) + 1e-3 * np.eye(2))
    return float(math.sqrt(ev[1] / max(ev[0], 1e-3)))


def _shape(largest: np.ndarray) -> tuple[float, float]:
    """(compactness, solidity) of one component."""
    from skimage.measure import perimeter
    from skimage.morphology import convex_hull_image

    area = float(largest.sum())
    per = max(float(perimeter(largest)), 1.0)
    hull = float(convex_hull_image(largest).sum()) if area >= 3 else area
    return float(min(4 * math.pi * area / per**2, 1.0)), area / max(hull, 1.0)


def region_descriptors(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The :data:`DESCRIPTORS` of a region (``mask``: (H, W) bool) in a uint8 RGB image (H, W, 3)."""
    from scipy import ndimage

    img, m = _check_pair(image, mask)
    rgb = img.astype(np.float32) / 255.0
    grey = rgb.mean(axis=2)
    ring = _ring(m)
    labels, n = ndimage.label(m)
    sizes = ndimage.sum(m, labels, range(1, n + 1))
    largest = labels == (1 + int(np.argmax(sizes)))
    grad = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))
    chroma = rgb - grey[..., None]
    boundary = m & ~ndimage.binary_erosion(m)
    ys, xs = np.nonzero(m)
    bbox = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    compact, solid = _shape(largest)
    return {
        "log_area": float(math.log(m.mean())),
        "elongation": _moments(m),
        "components": float(n),
        "intensity_contrast": float(grey[m].mean() - grey[ring].mean()),
        "colour_contrast": float(np.linalg.norm(chroma[m].mean(0) - chroma[ring].mean(0))),
        "texture_contrast": float(math.log((grad[m].mean() + 0.01) / (grad[ring].mean() + 0.01))),
        "inner_spread": float(grey[m].std()),
        "compactness": compact,
        "extent": float(m.sum() / bbox),
        "solidity": solid,
        "edge_contrast": float(grad[boundary].mean() - grad[ring].mean()),
    }


def _shape_word(d: dict[str, float]) -> str:
    if d["elongation"] >= 4:
        return "thin and line-like"
    if d["elongation"] >= 2:
        return "elongated"
    return "round" if d["compactness"] >= 0.5 else "irregular"


def explain(label: str, d: dict[str, float], example_id: str) -> str:
    """``"named crack: thin and line-like, elongation 6.1, 0.12 darker than its surroundings; like ..."``."""
    c = d["intensity_contrast"]
    tone = f"{abs(c):.2f} {'darker' if c < 0 else 'brighter'} than its surroundings"
    parts = [_shape_word(d), f"elongation {d['elongation']:.1f}", tone]
    if d["components"] > 1:
        parts.append(f"{int(d['components'])} parts")
    if abs(d["texture_contrast"]) >= 0.3:
        parts.append("rougher texture" if d["texture_contrast"] > 0 else "smoother texture")
    if d["colour_contrast"] >= 0.05:
        parts.append(f"colour shift {d['colour_contrast']:.2f}")
    area = 100 * math.exp(d["log_area"])
    return f"named {label}: {', '.join(parts)}; area {area:.1f}% of the image; like {example_id}"


def map_lens(mask: np.ndarray, sigma: float = MAP_LENS, level: float | None = None) -> np.ndarray:
    """A defect mask as a detector's map shows it: blurred by a Gaussian of ``sigma`` x the longer side, then cut
    where a detected region's core is cut (``level`` of the way from 0 to the blur's peak; default
    :data:`~vlm_ad.evidence.build.CORE_LEVEL`), the component around the peak."""
    from scipy import ndimage

    from vlm_ad.evidence.build import CORE_LEVEL, region_core

    m = np.asarray(mask).astype(np.float32)
    if sigma <= 0:  # no lens
        return m > 0
    blurred = ndimage.gaussian_filter(m, sigma * max(m.shape))
    core = region_core(blurred, blurred > 0, CORE_LEVEL if level is None else level, median=0.0)
    return core if core.any() else m > 0


# ------------------------------------------------------------------------------------------------ deep features
def region_cells(mask: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The cells of an (h, w) grid a region covers (at least :data:`PATCH_COVER` of the best-covered cell's share):
    their flat indices and coverages (the best-covered cell alone for a region smaller than a cell)."""
    w = _grid_weights(mask, size).reshape(-1)
    keep = np.flatnonzero(w >= PATCH_COVER * w.max())
    return keep, w[keep]


def _covered(grid: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of an (h, w, C) feature grid whose cells ``mask`` covers (:func:`region_cells`), as float32 (n, C),
    and their coverages (n,)."""
    cells, cover = region_cells(mask, grid.shape[:2])
    return grid.reshape(-1, grid.shape[-1])[cells].astype(np.float32), cover


class DeepRegionEncoder:
    """DINOv2-S (blocks 5 + 7) features averaged over a region minus their average over its ring: (2 * 384,)."""

    def __init__(self, *, backbone: str = "dinov2-s14", layers: Sequence[str] = DEEP_LAYERS, image_size: int = 224):
        from vlm_ad.backbones import create_backbone

        self.config = {"backbone": backbone, "layers": list(layers), "image_size": image_size}
        self.net = create_backbone(backbone, layers=tuple(layers), image_size=image_size)

    def grids(self, image: np.ndarray) -> np.ndarray:
        """Concatenated, per-patch L2-normalised layer grids of one image: (h, w, C)."""
        import torch

        layers = self.net.extract([image]).layers
        feats = [torch.nn.functional.normalize(t[0], dim=0) for t in layers.values()]  # each (C, h, w)
        return torch.cat(feats).permute(1, 2, 0).numpy()

    def __call__(self, image: np.ndarray, mask: np.ndarray, grid: np.ndarray | None = None) -> np.ndarray:
        """Region-minus-ring pooled feature of ``mask`` in ``image`` (pass ``grid`` to reuse :meth:`grids`)."""
        g = self.grids(image) if grid is None else grid
        inner, ring = _grid_weights(mask, g.shape[:2]), _grid_weights(_ring(mask), g.shape[:2])
        vec = (g * inner[..., None]).sum((0, 1)) - (g * ring[..., None]).sum((0, 1))
        return (vec / (np.linalg.norm(vec) + _EPS)).astype(np.float32)


class CellEncoder:
    """efficientnet-lite0 cells as PatchCore embeds them by default (stride-8 and stride-16 blocks, 3 x 3 pooled,
    L2-normalised, the product's input geometry): what the default detector itself sees of a defect."""

    def __init__(self, *, backbone: str = "efficientnet-lite0") -> None:
        from vlm_ad.detectors import create_detector

        self.config = {"backbone": backbone}
        self.embedder = create_detector("patchcore", backbone=backbone)._make_embedder()

    def grids(self, image: np.ndarray) -> np.ndarray:
        """The (h, w, C) cell grid of one image."""
        out = self.embedder([image])
        return (out[0] if isinstance(out, list) else out[0]).numpy()


def _grid_weights(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fraction of each patch covered by ``mask``, normalised to sum 1 (the best-covered patch if tiny)."""
    import torch

    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    w = torch.nn.functional.adaptive_avg_pool2d(m, size)[0, 0].numpy()
    if w.sum() < 0.5:
        w = (w == w.max()).astype(np.float32)
    return w / w.sum()


# ------------------------------------------------------------------------------------------------ the library
def _grown(bank: np.ndarray, owner: np.ndarray, rows: Any, example: int) -> tuple[np.ndarray, np.ndarray]:
    """A feature bank and its owner column with one example's ``rows`` appended (owned by index ``example``)."""
    rows = np.asarray(rows, np.float32)
    bank = rows if bank.size == 0 else np.concatenate([bank, rows])
    return bank, np.concatenate([owner, np.full(len(rows), example, np.int64)])


class DefectLibrary:
    """A store of labelled defect regions that names new regions by nearest-neighbour voting.

    Args:
        features: ``"patches+cells"`` (the default): every DINOv2 patch (blocks 5 + 7) a region covers votes for
            the label of its nearest labelled patch of the library's examples, weighted by its coverage / (distance
            + 0.001), and so do the region's :data:`TOP_CELLS` strongest cells of the map in efficientnet-lite0
            features (PatchCore's default embedding; weighted by the map) against the examples' cells, each kind's
            votes as shares of its own sum; ``"patches"``: the DINOv2 votes alone (the default before). Both name
            the regions cut from a detector's map far better than descriptors (eval/results/qa.md,
            eval/results/probes.md).
            ``"descriptors"`` (interpretable only, no backbone), ``"deep"`` (DINOv2 pooled over the region) or
            ``"combined"`` (both: best on exact ground-truth masks, ``eval/results/naming.md``). The explanation
            always cites the descriptors and the example.
        k: neighbours that vote (not in ``"patches"`` mode, where every covered patch votes).
        deep_weight: weight of the deep distance in ``"combined"`` mode.
        encoder: a :class:`DeepRegionEncoder` to reuse (built lazily when deep features are needed).
        lens: sigma of the :func:`map_lens` the examples are also described through, as a share of the longer side.
    """

    def __init__(self, *, features: str = DEFAULT_FEATURES, k: int = 3, deep_weight: float = 1.0,
                 encoder: DeepRegionEncoder | None = None, lens: float = MAP_LENS) -> None:
        if features not in FEATURE_MODES:
            raise ConfigError(f"features must be one of {FEATURE_MODES}, got {features!r}")
        if k < 1 or deep_weight < 0 or not 0 <= lens < 0.5:
            raise ConfigError(f"k must be >= 1, deep_weight >= 0 and lens in [0, 0.5), got k={k}, "
                              f"deep_weight={deep_weight}, lens={lens}")
        self.features, self.k, self.deep_weight, self.lens = features, k, deep_weight, float(lens)
        self._encoder = encoder
        self.labels: list[str] = []
        self.example_ids: list[str] = []
        self.desc = np.zeros((0, len(DESCRIPTORS)), np.float32)  # (N, D) raw descriptors
        self.desc_lens = np.zeros((0, len(DESCRIPTORS)), np.float32)  # (N, D) of the masks through map_lens
        self.deep = np.zeros((0, 0), np.float32)  # (N, C) deep features, or (N, 0) without them
        self.patches = np.zeros((0, 0), np.float32)  # (M, C) the examples' patch features ("patches" mode)
        self.patch_owner = np.zeros(0, np.int64)  # (M,) the example each patch row belongs to
        self.cells = np.zeros((0, 0), np.float32)  # (L, C') their efficientnet-lite0 cells ("patches+cells")
        self.cell_owner = np.zeros(0, np.int64)  # (L,) the example each cell row belongs to
        self.cell_backbone = "efficientnet-lite0"
        self._cell_encoder: CellEncoder | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def uses_deep(self) -> bool:
        return self.features in ("deep", "combined")

    @property
    def uses_patches(self) -> bool:
        return self.features in ("patches", "patches+cells")

    @property
    def uses_cells(self) -> bool:
        return self.features == "patches+cells"

    @property
    def cell_encoder(self) -> CellEncoder:
        if self._cell_encoder is None:
            self._cell_encoder = CellEncoder(backbone=self.cell_backbone)
        return self._cell_encoder

    @property
    def encoder(self) -> DeepRegionEncoder:
        if self._encoder is None:
            self._encoder = DeepRegionEncoder()
        return self._encoder

    # building ---------------------------------------------------------------------------------------------
    def describe(self, image: np.ndarray, mask: np.ndarray) -> tuple[dict[str, float], np.ndarray | None]:
        """Descriptors (and deep features when this library uses them) of one region."""
        d = region_descriptors(image, mask)
        img, m = _check_pair(image, mask)
        return d, (self.encoder(img, m) if self.uses_deep else None)

    def add(self, image: np.ndarray, mask: np.ndarray, label: str, example_id: str) -> DefectLibrary:
        """Add one labelled region (``mask``: (H, W) bool over ``image``), described as it is and through the map
        lens (:func:`map_lens`); returns self."""
        d, deep = self.describe(image, mask)
        img, m = _check_pair(image, mask)
        lens = region_descriptors(img, map_lens(m, self.lens))
        patches = self._region_patches(img, m)[0] if self.uses_patches else None
        cells = self._region_cells(img, m)[0] if self.uses_cells else None
        return self.add_described(d, deep, label, example_id, lens_descriptors=lens, patches=patches, cells=cells)

    def _region_patches(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the DINOv2 patch features of the cells ``mask`` covers (n, C), their coverages (n,))."""
        return _covered(self.encoder.grids(image), mask)

    def _region_cells(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the efficientnet-lite0 cells ``mask`` covers (n, C'), their coverages (n,))."""
        return _covered(self.cell_encoder.grids(image), mask)

    def _query_cells(self, image: np.ndarray, mask: np.ndarray, heat: np.ndarray | None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """The cells of a region to name that vote, with their weights: the :data:`TOP_CELLS` strongest cells of
        ``heat`` (the map over the region, 0 elsewhere; cell = its average), weighted by it; without a usable
        ``heat``, every cell the region covers, weighted by its coverage."""
        import torch

        g = self.cell_encoder.grids(image)
        if heat is not None and np.shape(heat) == mask.shape:
            h = np.clip(np.nan_to_num(np.asarray(heat, np.float32)), 0, None)
            pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(h)[None, None], g.shape[:2])
            pooled = pooled.reshape(-1)
            if float(pooled.max()) > 0:
                top = torch.topk(pooled, min(TOP_CELLS, int((pooled > 0).sum())))
                return g.reshape(-1, g.shape[-1])[top.indices.numpy()].astype(np.float32), top.values.numpy()
        return _covered(g, mask)

    def add_described(self, descriptors: dict[str, float], deep: np.ndarray | None, label: str,
                      example_id: str, *, lens_descriptors: dict[str, float] | None = None,
                      patches: np.ndarray | None = None, cells: np.ndarray | None = None) -> DefectLibrary:
        """Add a region whose descriptors (and deep vector) are already computed; returns self.
        ``lens_descriptors``: of its mask through :func:`map_lens` (default: the same as ``descriptors``);
        ``patches``: (n, C) DINOv2 features of the cells it covers ("patches" modes); ``cells``: (n', C')
        efficientnet-lite0 features of the cells it covers ("patches+cells")."""
        if not label or not str(label).strip():
            raise ConfigError("a library example needs a non-empty label (the defect type name)")
        if self.uses_deep and deep is None:
            raise ConfigError(f"this library uses {self.features!r} features: pass the deep vector too")
        if self.uses_patches:
            if patches is None or len(patches) == 0:
                raise ConfigError("this library uses 'patches' features: pass the region's patch features too")
            self.patches, self.patch_owner = _grown(self.patches, self.patch_owner, patches, len(self.labels))
        if self.uses_cells:
            if cells is None or len(cells) == 0:
                raise ConfigError("this library uses 'patches+cells' features: pass the region's cells too")
            self.cells, self.cell_owner = _grown(self.cells, self.cell_owner, cells, len(self.labels))
        row = np.array([[descriptors[n] for n in DESCRIPTORS]], np.float32)
        self.desc = np.concatenate([self.desc, row])
        lens = row if lens_descriptors is None else np.array([[lens_descriptors[n] for n in DESCRIPTORS]], np.float32)
        self.desc_lens = np.concatenate([self.desc_lens, lens])
        if self.uses_deep:
            vec = np.asarray(deep, np.float32)[None]
            self.deep = vec if self.deep.size == 0 else np.concatenate([self.deep, vec])
        self.labels.append(str(label))
        self.example_ids.append(str(example_id))
        return self

    def add_mvtec(self, root: str | Path, *, per_type: int | None = None, seed: int = 0,
                  progress: Any = None) -> DefectLibrary:
        """Add every masked defect of an MVTec-layout category's ``test/<type>`` folders (or ``per_type`` of each)."""
        from vlm_ad.data import MVTecDataset

        test = MVTecDataset(root, "test")
        by_type: dict[str, list[int]] = {}
        for i, item in enumerate(test.items):
            if item.label == 1:
                by_type.setdefault(item.defect_type, []).append(i)
        if not by_type:
            raise DataError(f"{root} has no defect images under test/<type>; the library needs labelled defects")
        rng = np.random.default_rng(seed)
        for t, idx in sorted(by_type.items()):
            chosen = idx if per_type is None else sorted(rng.permutation(idx)[:per_type].tolist())
            for i in chosen:
                s = test[i]
                if s.mask is None or not s.mask.any():
                    continue
                self.add(s.image, s.mask, t, s.image_id)
                if progress:
                    progress(1)
        return self

    # naming -----------------------------------------------------------------------------------------------
    def _check_ready(self) -> None:
        if len(self) == 0:
            raise DataError("the defect library is empty; add labelled regions first ('vlm-ad library add')")

    def distances(self, descriptors: dict[str, float], deep: np.ndarray | None, *, from_map: bool = False
                  ) -> np.ndarray:
        """Distance of one region to every library entry: (N,), lower = closer (``from_map``: to the entries'
        descriptors through the map lens)."""
        self._check_ready()
        desc = self.desc_lens if from_map else self.desc
        mu, sd = desc.mean(0), desc.std(0) + 1e-3
        z = (desc - mu) / sd  # (N, D)
        q = (np.array([descriptors[n] for n in DESCRIPTORS], np.float32) - mu) / sd
        d_desc = np.linalg.norm(z - q, axis=1) / math.sqrt(len(DESCRIPTORS))
        if not self.uses_deep:
            return d_desc
        d_deep = 1.0 - self.deep @ np.asarray(deep, np.float32)  # cosine distance
        if self.features == "deep":
            return d_deep
        return d_desc / _pair_scale(z) + self.deep_weight * d_deep / _pair_scale(self.deep, cosine=True)

    #: the evidence names a detected region with ``from_map=True`` (see :func:`map_lens`)
    names_map_regions = True

    #: ``name`` takes ``heat``: the detector's map over the region (see :meth:`name`)
    names_with_heat = True

    def name(self, image: np.ndarray, region_mask: np.ndarray, *, from_map: bool = False,
             heat: np.ndarray | None = None) -> DefectName:
        """Name the region ``region_mask`` ((H, W) bool) of ``image`` by its nearest labelled library regions;
        ``from_map``: the mask was cut from a detector's map (compare with the examples through the map lens);
        ``heat``: (H, W) the map over the whole region the mask was cut from, 0 elsewhere ("patches+cells": its
        strongest cells vote; without it, the cells the mask covers)."""
        self._check_ready()
        d, deep = self.describe(image, region_mask)
        if self.uses_patches:
            img, m = _check_pair(image, region_mask)
            cells = self._query_cells(img, m, heat) if self.uses_cells else None
            return self.name_patches(d, *self._region_patches(img, m), cells=cells)
        return self.name_described(d, deep, from_map=from_map)

    def _votes(self, query: np.ndarray, weights: np.ndarray, bank: np.ndarray, owner: np.ndarray,
               exclude: Sequence[bool] | None) -> tuple[Counter[str], dict[str, tuple[float, int]]]:
        """Each query row votes for the label of its nearest bank row with ``weight / (distance + 0.001)``; the
        votes as shares of their sum, and per label its nearest (distance, example)."""
        import torch

        usable = np.ones(len(owner), bool) if exclude is None else ~np.asarray(exclude, bool)[owner]
        if not usable.any():
            raise DataError("no library example is left to compare with; add more labelled regions")
        bank, owner = bank[usable], owner[usable]
        dist, idx = torch.cdist(torch.from_numpy(np.asarray(query, np.float32)), torch.from_numpy(bank)).min(dim=1)
        votes: Counter[str] = Counter()
        nearest: dict[str, tuple[float, int]] = {}
        for w, di, i in zip(np.asarray(weights, np.float64), dist.tolist(), idx.tolist()):
            lab = self.labels[int(owner[i])]
            votes[lab] += float(w) / (di + 1e-3)
            if lab not in nearest or di < nearest[lab][0]:
                nearest[lab] = (di, int(owner[i]))
        total = sum(votes.values()) or 1.0
        return Counter({lab: v / total for lab, v in votes.items()}), nearest

    def name_patches(self, descriptors: dict[str, float], patches: np.ndarray, cover: np.ndarray,
                     exclude: Sequence[bool] | None = None, *,
                     cells: tuple[np.ndarray, np.ndarray] | None = None) -> DefectName:
        """Name a region from the features of the patches it covers: each votes for the label of its nearest library
        patch with weight ``cover / (distance + 0.001)`` (Euclidean distance of L2-normalised block features);
        ``exclude`` (N,) masks out library examples (leave-one-out). ``cells``: (features (n, C'), weights (n,)) of
        the region's efficientnet-lite0 cells ("patches+cells"), whose votes against the examples' cells are added,
        each bank's votes as shares of its own sum. The example cited is the owner of the winning label's nearest
        DINOv2 patch (its nearest cell when no patch voted for it)."""
        votes, nearest = self._votes(patches, cover, self.patches, self.patch_owner, exclude)
        if cells is not None and len(self.cell_owner):
            cell_votes, cell_nearest = self._votes(cells[0], cells[1], self.cells, self.cell_owner, exclude)
            votes.update(cell_votes)  # Counter.update adds
            for lab, hit in cell_nearest.items():
                nearest.setdefault(lab, hit)
        label = max(votes, key=lambda lab: (votes[lab], -nearest[lab][0]))
        dist_best, best = nearest[label]
        total = sum(votes.values())
        return DefectName(label, votes[label] / total, self.example_ids[best], float(dist_best), dict(descriptors),
                          explain(label, descriptors, self.example_ids[best]),
                          {lab: v / total for lab, v in votes.items()})

    def name_described(self, descriptors: dict[str, float], deep: np.ndarray | None,
                       exclude: Sequence[bool] | None = None, *, from_map: bool = False) -> DefectName:
        """Name a region from its descriptors; ``exclude`` (N,) masks out library rows (leave-one-out)."""
        if self.uses_patches:
            raise ConfigError("a 'patches' library names a region from its patches: use name() or name_patches()")
        dist = self.distances(descriptors, deep, from_map=from_map)
        if exclude is not None:
            dist = np.where(np.asarray(exclude), np.inf, dist)
        order = [int(i) for i in np.argsort(dist, kind="stable") if np.isfinite(dist[i])][: self.k]
        if not order:
            raise DataError("no library example is left to compare with; add more labelled regions")
        votes: Counter[str] = Counter()
        for i in order:
            votes[self.labels[i]] += 1.0 / (float(dist[i]) + 0.05)
        label = max(votes, key=lambda lab: (votes[lab], -min(dist[i] for i in order if self.labels[i] == lab)))
        best = min((i for i in order if self.labels[i] == label), key=lambda i: dist[i])
        total = sum(votes.values())
        return DefectName(label, votes[label] / total, self.example_ids[best], float(dist[best]), dict(descriptors),
                          explain(label, descriptors, self.example_ids[best]),
                          {lab: v / total for lab, v in votes.items()})

    # persistence ------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``library.json`` and ``library.safetensors`` into ``directory`` (atomically)."""
        import torch
        from safetensors.torch import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"descriptors": torch.from_numpy(np.ascontiguousarray(self.desc)),
                   "descriptors_lens": torch.from_numpy(np.ascontiguousarray(self.desc_lens))}
        if self.uses_deep and self.deep.size:
            tensors["deep"] = torch.from_numpy(np.ascontiguousarray(self.deep))
        if self.uses_patches and self.patches.size:
            tensors["patches"] = torch.from_numpy(np.ascontiguousarray(self.patches))
            tensors["patch_owner"] = torch.from_numpy(np.ascontiguousarray(self.patch_owner))
        if self.uses_cells and self.cells.size:
            tensors["cells"] = torch.from_numpy(np.ascontiguousarray(self.cells))
            tensors["cell_owner"] = torch.from_numpy(np.ascontiguousarray(self.cell_owner))
        atomic_write_bytes(directory / "library.safetensors", save(tensors))
        meta = {"features": self.features, "k": self.k, "deep_weight": self.deep_weight, "lens": self.lens,
                "descriptor_names": list(DESCRIPTORS), "labels": self.labels, "example_ids": self.example_ids,
                "encoder": self._encoder.config if self._encoder is not None else None,
                "cell_encoder": {"backbone": self.cell_backbone} if self.uses_cells else None}
        write_meta(directory / "library.json", kind="defect-library", version=_FORMAT, meta=meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> DefectLibrary:
        """Load a library saved with :meth:`save`."""
        meta, tensors = read_artifact(directory, "library.json", "library.safetensors", kind="defect-library",
                                      version=_FORMAT, what="defect library",
                                      remedy="create one with 'vlm-ad library add LIB --from DATA'")
        if meta.get("descriptor_names") != list(DESCRIPTORS):
            raise DataError(f"{directory} was written with other descriptors ({meta.get('descriptor_names')}); "
                            "rebuild it with 'vlm-ad library add'")
        enc = meta.get("encoder")
        lib = cls(features=meta["features"], k=meta["k"], deep_weight=meta["deep_weight"],
                  lens=meta.get("lens", 0.0),
                  encoder=DeepRegionEncoder(**enc) if enc and meta["features"] != "descriptors" else None)
        lib.desc = tensors["descriptors"].numpy()
        # a library saved before the map lens: its examples as they are
        lib.desc_lens = tensors["descriptors_lens"].numpy() if "descriptors_lens" in tensors else lib.desc.copy()
        lib.deep = tensors["deep"].numpy() if "deep" in tensors else np.zeros((len(lib.desc), 0), np.float32)
        if "patches" in tensors:
            lib.patches, lib.patch_owner = tensors["patches"].numpy(), tensors["patch_owner"].numpy().astype(np.int64)
        if "cells" in tensors:
            lib.cells, lib.cell_owner = tensors["cells"].numpy(), tensors["cell_owner"].numpy().astype(np.int64)
            lib.cell_backbone = (meta.get("cell_encoder") or {}).get("backbone", lib.cell_backbone)
        lib.labels, lib.example_ids = list(meta["labels"]), list(meta["example_ids"])
        return lib

    def summary(self) -> dict[str, int]:
        """Examples per label."""
        return dict(sorted(Counter(self.labels).items()))


def _pair_scale(x: np.ndarray, *, cosine: bool = False) -> float:
    """Median off-diagonal pairwise distance of library rows (1.0 when there are fewer than two)."""
    if len(x) < 2:
        return 1.0
    d = 1.0 - x @ x.T if cosine else np.linalg.norm(x[:, None] - x[None], axis=2) / math.sqrt(x.shape[1])
    off = d[~np.eye(len(x), dtype=bool)]
    return float(max(np.median(off), 1e-3))
