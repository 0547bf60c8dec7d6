"""The detector contract, shared by every registered detector.

``create_detector(name, backbone=..., **hyper)`` stores hyper-parameters only; ``fit(normal_images)``
learns and returns ``self`` (learned state ends in ``_``); ``predict(images)`` returns one
:class:`~vlm_ad.types.AnomalyMap` per image (higher score = more anomalous); an unfitted detector raises
:class:`~vlm_ad.errors.NotFittedError`. ``save(dir)`` / ``load(dir)`` use JSON + safetensors only.

Images are ``uint8`` RGB arrays (H, W, 3) or :class:`~vlm_ad.types.Sample`; maps come back at each input's
own resolution.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from vlm_ad._cache import atomic_write_bytes
from vlm_ad._shapes import describe_pool, point_grid, work_shape
from vlm_ad.artifacts import write_meta
from vlm_ad.backbones import Backbone, create_backbone
from vlm_ad.backbones.geometry import Geometry, stitch
from vlm_ad.errors import ConfigError, DataError, NotFittedError
from vlm_ad.types import AnomalyMap, Sample

ImageLike = Union[np.ndarray, Sample]
Progress = Callable[[int], None]  # called with the number of images just processed

DEFAULT_LAYERS = {"dinov2-s14": ("block5", "block7"), "efficientnet-lite0": ("block4", "block10")}
POOL_PADS = ("zero", "exclude", "reflect", "sqrt")  # PatchEmbedder(pool_pad=...): the pooling at the grid's border
# the input settings (geometry, image_size and optionally min_side, max_downscale) per backbone when no geometry is
# given, from eval/results/generalization.md: for efficientnet-lite0 "area" 224 beat "square" 224 on most cells of the
# dev half and lost nowhere by more than the seed spread, and the unseen half agreed (area 256 won more on dev but lost
# image AUROC beyond the spread on the unseen half)
DEFAULT_INPUT: dict[str, dict[str, Any]] = {"efficientnet-lite0": {"geometry": "area", "image_size": 224}}
# other backbones: square 224. For dinov2-s14 PatchCore and mutual have their own defaults (``default_input``)
FALLBACK_INPUT: dict[str, Any] = {"geometry": "square", "image_size": 224}


def as_images(images: Sequence[ImageLike]) -> tuple[list[np.ndarray], list[str]]:
    """Split inputs into pixel arrays and ids (a Sample's id, else the position as a string)."""
    arrays, ids = [], []
    for i, item in enumerate(images):
        if isinstance(item, Sample):
            arrays.append(item.image)
            ids.append(item.image_id)
        else:
            arrays.append(np.asarray(item))
            ids.append(str(i))
    return arrays, ids


class PatchEmbedder:
    """Backbone + input geometry + local aggregation: images -> patch grids (B, h, w, C) on the finest layer grid.

    Args:
        backbone: a registered backbone name or an instance.
        layers: backbone layers to use (default: the backbone's recommended pair).
        image_size: input size in pixels (see ``geometry``; default: :data:`DEFAULT_INPUT` for the backbone, else
            224).
        geometry: ``"aspect"`` (keep the aspect ratio, long side ``image_size``), ``"area"`` (keep the aspect ratio
            at the pixel count of an ``image_size`` square) or ``"square"`` (squash to ``image_size`` x
            ``image_size``); sides are multiples of the backbone's ``patch_multiple``. Default: :data:`DEFAULT_INPUT`
            for the backbone (``"area"`` for efficientnet-lite0), else ``"square"``; always ``"square"`` for
            backbones of one fixed input size (CLIP towers). See :mod:`vlm_ad.backbones.geometry`.
        min_side: the least short side of ``aspect``/``area`` inputs in pixels (the long side grows with it, up to
            4 x ``image_size``). Default: :data:`DEFAULT_INPUT`'s when ``geometry`` is not given either, else None.
        max_downscale: the most an ``aspect``/``area`` input shrinks the image's long side (the input grows for
            larger images, up to 4 x ``image_size``). Default as for ``min_side``.
        tile: tile side in input pixels: larger inputs are embedded as overlapping tiles and stitched (None: off).
        input_shape: a fixed (H, W) input for every image (PaDiM sets it from its training images).
        pool: side of the average-pooling window applied to each layer (PatchCore's local neighbourhood), or one
            side per layer in ``layers``' order (e.g. ``(3, 1)``: the first layer pooled 3 x 3, the second not).
        pool_pad: what the pooling window sees past the grid's border: ``"zero"`` (zeros, counted in the average, as
            anomalib; border vectors shrink), ``"exclude"`` (the average over the cells inside the grid),
            ``"reflect"`` (the cells mirrored at the border) or ``"sqrt"`` (the sum over the n cells inside divided by
            ``pool * sqrt(n)``: between the two, a border vector keeps the interior's noise level where cells are
            independent, so border noise is neither damped as with zeros nor raised as with ``"exclude"``).
        normalize: L2-normalise each patch vector.
    """

    def __init__(
        self,
        backbone: str | Backbone = "efficientnet-lite0",
        *,
        layers: Sequence[str] | None = None,
        image_size: int | None = None,
        geometry: str | None = None,
        tile: int | None = None,
        input_shape: Sequence[int] | None = None,
        min_side: int | None = None,
        max_downscale: int | None = None,
        pool: int | Sequence[int] = 3,
        pool_pad: str = "zero",
        normalize: bool = True,
    ) -> None:
        if isinstance(backbone, Backbone):
            self.backbone_name, self.net = backbone.name, backbone
            self.layers, size = tuple(backbone.layers), image_size or backbone.image_size
        else:
            self.backbone_name = backbone
            self.layers = tuple(layers) if layers else DEFAULT_LAYERS.get(backbone)
            size = image_size or DEFAULT_INPUT.get(backbone, FALLBACK_INPUT)["image_size"]
            kw = {"image_size": size} | ({"layers": self.layers} if self.layers else {})
            self.net = create_backbone(backbone, **kw)
            self.layers = tuple(self.net.layers)
        pools = (pool,) if isinstance(pool, (int, np.integer)) else tuple(pool)
        if not pools or any(not isinstance(p, (int, np.integer)) or isinstance(p, bool) or p < 1 or p % 2 == 0
                            for p in pools):
            raise ConfigError(f"pool must be a positive odd number or one per layer, got {pool!r}")
        if len(pools) > 1 and len(pools) != len(self.layers):
            raise ConfigError(f"pool gives {len(pools)} windows for {len(self.layers)} layers "
                              f"({', '.join(self.layers)}); give one number or one per layer")
        if pool_pad not in POOL_PADS:
            raise ConfigError(f"pool_pad must be one of {', '.join(POOL_PADS)}; got {pool_pad!r}")
        any_shape = bool(getattr(self.net, "any_shape", False))
        size = size if any_shape else self.net.image_size  # fixed-size networks take their own size only
        if geometry is None:  # the backbone's default input, its least short side and most downscale included
            default = DEFAULT_INPUT.get(self.backbone_name, FALLBACK_INPUT) if any_shape else FALLBACK_INPUT
            geometry = default["geometry"]
            min_side = default.get("min_side") if min_side is None else min_side
            max_downscale = default.get("max_downscale") if max_downscale is None else max_downscale
        if not any_shape and (geometry != "square" or tile or input_shape):
            raise ConfigError(f"{self.backbone_name} takes square inputs of its own size only: use geometry='square' "
                              "without tile or input_shape")
        self.geometry = Geometry(mode=geometry, size=int(size), multiple=int(getattr(self.net, "patch_multiple", 1)),
                                 tile=tile, shape=tuple(input_shape) if input_shape else None, min_side=min_side,
                                 max_downscale=max_downscale)
        self.pool: int | tuple[int, ...] = int(pools[0]) if len(set(pools)) == 1 else tuple(int(p) for p in pools)
        self.pool_pad, self.normalize = pool_pad, normalize

    @property
    def pools(self) -> tuple[int, ...]:
        """The pooling window of each layer."""
        return self.pool if isinstance(self.pool, tuple) else (self.pool,) * len(self.layers)

    @property
    def pool_reach(self) -> int:
        """The widest pooling window: how far one patch's feature reaches in the pooled grid."""
        return max(self.pools)

    @property
    def image_size(self) -> int:
        return self.geometry.size

    def set_input_shape(self, shape: Sequence[int] | None) -> None:
        """Fix every input to ``shape`` (H, W), or release it (None)."""
        self.geometry = replace(self.geometry, shape=tuple(int(v) for v in shape) if shape else None)

    def grid_shape(self, image_shape: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the patch grid of an image of ``image_shape`` (H, W): one tiny forward pass per input
        shape, cached."""
        grids = self.__dict__.setdefault("_grids", {})
        key = self.geometry.input_shape(*image_shape)
        if key not in grids:
            emb = self([np.zeros((*key, 3), np.uint8)])
            grids[key] = (int(emb.shape[1]), int(emb.shape[2]))
        return grids[key]

    def config(self) -> dict[str, Any]:
        """Settings that rebuild this embedder (saved with a model)."""
        g = self.geometry
        return {"backbone": self.backbone_name, "layers": list(self.layers), "image_size": g.size,
                "geometry": g.mode, "tile": g.tile, "input_shape": list(g.shape) if g.shape else None,
                "min_side": g.min_side, "max_downscale": g.max_downscale,
                "pool": list(self.pool) if isinstance(self.pool, tuple) else self.pool,
                "pool_pad": self.pool_pad, "normalize": self.normalize}

    def input_shape(self, image: np.ndarray) -> tuple[int, int]:
        """The (H, W) backbone input of an image (images with equal input shapes are embedded together)."""
        return self.geometry.input_shape(*np.asarray(image).shape[:2])

    def view_fraction(self, grid_hw: Sequence[int]) -> float:
        """Long side of one view (a tile, or the whole input) over the long side of a patch grid of ``grid_hw``."""
        cell = getattr(self, "cell_px_", None)  # input pixels per patch, known after the first embedding
        if self.geometry.tile is None or cell is None:
            return 1.0
        return min(1.0, self.geometry.tile / cell / max(grid_hw))

    def groups(self, images: Sequence[np.ndarray]) -> list[list[int]]:
        """Indices of the images, grouped by input shape (first-seen order)."""
        out: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            out.setdefault(self.input_shape(img), []).append(i)
        return list(out.values())

    def __call__(self, images: Sequence[np.ndarray], *, batch_size: int = 8, progress: Progress | None = None):
        """Embed images of one input shape in batches: returns (B, h, w, C) float32 on the CPU."""
        if len(self.groups(images)) > 1:
            shapes = sorted({self.input_shape(img) for img in images})
            raise DataError(f"these images have different input shapes {shapes[:4]} under geometry "
                            f"{self.geometry.mode!r}; embed each group of embedder.groups(images) separately")
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            out.append(self.aggregate(self.layer_features(chunk, batch_size=batch_size)))
            if progress:
                progress(len(chunk))
        self.cell_px_ = self.input_shape(images[0])[0] / out[0].shape[1]
        return torch.cat(out)

    def layer_features(self, images: Sequence[np.ndarray], *, batch_size: int = 8) -> dict[str, torch.Tensor]:
        """Backbone features ``{layer: (B, C, h, w)}`` of images of one input shape, tiled when it is larger than
        ``tile``."""
        shape = self.input_shape(images[0])
        tile_hw, rows, cols = self.geometry.tiles(shape)
        if len(rows) * len(cols) == 1:
            return self.net.extract(images, batch_size=batch_size, size=shape).layers
        net, per_image = self.net.eval(), []
        for img in images:
            x = net.preprocess([img], size=shape)  # (1, 3, H, W)
            crops = torch.cat([x[..., r : r + tile_hw[0], c : c + tile_hw[1]] for r in rows for c in cols])
            feats: dict[str, list[torch.Tensor]] = {}
            with torch.no_grad():
                for start in range(0, len(crops), batch_size):
                    for name, t in net(crops[start : start + batch_size].to(net.device)).items():
                        feats.setdefault(name, []).append(t.float().cpu())
            per_image.append(stitch({k: torch.cat(v) for k, v in feats.items()}, shape, tile_hw, rows, cols))
        return {name: torch.cat([p[name] for p in per_image]) for name in per_image[0]}

    def _pool(self, t: torch.Tensor, pool: int | None = None) -> torch.Tensor:
        """Average each cell over its ``pool`` x ``pool`` neighbourhood (default: the first layer's window), the
        border as ``pool_pad`` says."""
        pool = self.pools[0] if pool is None else int(pool)
        r = pool // 2
        if r == 0:
            return t
        if self.pool_pad == "reflect" and min(t.shape[-2:]) > r:  # reflection needs more cells than the radius
            return F.avg_pool2d(F.pad(t, (r, r, r, r), mode="reflect"), pool, stride=1)
        if self.pool_pad == "sqrt":  # sum over the n cells inside / (pool * sqrt(n)): the interior's noise level
            inside = F.avg_pool2d(torch.ones_like(t[:1, :1]), pool, stride=1, padding=r) * pool * pool  # n per cell
            mean = F.avg_pool2d(t, pool, stride=1, padding=r, count_include_pad=False)
            return mean * inside.sqrt() / pool
        return F.avg_pool2d(t, pool, stride=1, padding=r, count_include_pad=self.pool_pad == "zero")

    def aggregate(self, layers: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pool each layer, resize to the finest grid, concatenate channels: (B, h, w, C)."""
        maps = [self._pool(t, p) for t, p in zip(layers.values(), self.pools, strict=True)]
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear") for m in maps]
        emb = torch.cat(maps, dim=1).permute(0, 2, 3, 1).contiguous()  # (B, h, w, C)
        return F.normalize(emb, dim=-1) if self.normalize else emb


def gaussian_blur(grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (B, H, W) maps with a Gaussian of std ``sigma`` pixels (reflect padding; edge-replicate padding along
    a side shorter than the kernel's radius, where reflection is undefined: very thin or tiny inputs)."""
    if sigma <= 0:
        return grid
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = (k / k.sum()).to(grid.dtype)
    g = grid[:, None]
    h, w = g.shape[-2:]
    g = F.conv2d(F.pad(g, (radius, radius, 0, 0), mode="reflect" if radius < w else "replicate"), k.view(1, 1, 1, -1))
    g = F.conv2d(F.pad(g, (0, 0, radius, radius), mode="reflect" if radius < h else "replicate"), k.view(1, 1, -1, 1))
    return g[:, 0]


SIGMA = 4.0  # the map smoothing's default std in pixels of a 256-px long side (the ``sigma`` option)


def smooth_grid(grid: torch.Tensor, *, sigma: float = SIGMA, work: int = 256, view: float = 1.0) -> torch.Tensor:
    """Upsample (h, w) or (B, h, w) patch-score grids to their work grid (:func:`work_shape`, aspect kept) and blur
    them. ``sigma`` is in pixels of a 256-px long side of one view (the whole input, or a ``view`` share of it when
    tiled), so a square 224/256 input smooths exactly as before geometry existed. Batched, since per-image calls are
    dominated by call overhead."""
    single = grid.ndim == 2
    g = grid[None] if single else grid
    size = work_shape(g.shape[-2:], work=work)
    g = F.interpolate(g[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    g = gaussian_blur(g, sigma * view * max(size) / 256)
    return g[0] if single else g


def resize_map(work_map: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Resize a (h, w) map to an image size (H, W), as float32 numpy."""
    out = F.interpolate(work_map[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return out.numpy().astype(np.float32)


FORMAT_VERSION = 1  # of detector.json (see vlm_ad.artifacts)
EMBEDDER_KEYS = ("layers", "image_size", "pool", "pool_pad", "geometry", "tile", "input_shape", "min_side",
                 "max_downscale")  # the PatchEmbedder's


class Detector:
    """Base class: the estimator contract, persistence and the embedding step.

    ``__init__`` only stores (and checks) hyper-parameters; :meth:`fit` (or ``load_detector``) builds the backbone
    and everything learned, in attributes ending in ``_``.
    """

    name = "detector"
    raw_features = False  # True: the detector models raw feature values, so patch vectors are never L2-normalised
    extra_options: tuple[str, ...] = ()  # options taken through **hyper besides the embedder's and ``sigma``
    # backbone -> input settings when no geometry is given, over DEFAULT_INPUT (settings given win)
    default_input: dict[str, dict[str, Any]] = {}

    def __init__(self, backbone: str | Backbone = "efficientnet-lite0", **hyper: Any) -> None:
        self.backbone = backbone
        self.hyper = hyper
        self.embedder_: Any = None  # the PatchEmbedder, built by fit / load
        self.threshold_: float | None = None
        self.timings_ = {"embed": 0.0, "score": 0.0}  # seconds spent in predict: backbone vs scoring/search

    @property
    def embedder(self) -> Any:
        """The patch embedder built by :meth:`fit` or ``load_detector``."""
        if self.embedder_ is None:
            raise NotFittedError(f"{self.name} is not fitted: call fit(normal_images) or load a saved model first")
        return self.embedder_

    def _make_embedder(self) -> Any:
        """Build the backbone and the patch aggregation (called by fit and load, never by ``__init__``)."""
        kw = {k: self.hyper[k] for k in EMBEDDER_KEYS if k in self.hyper}
        name = self.backbone if isinstance(self.backbone, str) else getattr(self.backbone, "name", None)
        if "geometry" not in kw and name in self.default_input:  # this detector's own default for the backbone
            kw = self.default_input[name] | kw
        emb = PatchEmbedder(self.backbone, **kw)
        if self.raw_features:
            emb.normalize = False
        return emb

    def _ensure_embedder(self) -> None:
        if self.embedder_ is None:
            self.embedder_ = self._make_embedder()

    # contract ---------------------------------------------------------------------------------------------
    def fit(self, normal_images: Sequence[ImageLike], *, progress: Progress | None = None) -> Detector:
        """Learn from normal images (an empty list only for zero-shot detectors); returns self."""
        self._ensure_embedder()
        arrays, ids = as_images(normal_images)
        arrays, ids = self._augment(arrays, ids)
        emb = self._embed(arrays, progress) if arrays else torch.empty(0)
        self._fit_embeddings(emb, ids)
        self.threshold_ = self._calibrate(emb, ids)
        return self

    def fit_layers(self, layers: dict[str, torch.Tensor], ids: list[str]) -> Detector:
        """Fit on precomputed backbone layer features (``{layer: (N, C, h, w)}``) of normal images; returns self.

        For benchmarks that extract features once and fit many detectors; no augmentation is applied.
        """
        self._ensure_embedder()
        emb = self.embedder.aggregate(layers)
        self._fit_embeddings(emb, ids)
        self.threshold_ = self._calibrate(emb, ids)
        return self

    def predict_layers(self, layers: dict[str, torch.Tensor], sizes: Sequence[tuple[int, int]],
                       ids: Sequence[str]) -> list[AnomalyMap]:
        """Score precomputed layer features of images of the given (H, W) sizes."""
        self._check_fitted()
        t0 = time.perf_counter()
        grids, hits = self._score_embeddings(self.embedder.aggregate(layers))
        self.timings_["score"] += time.perf_counter() - t0
        return self._to_maps(grids, list(sizes), list(ids), hits)

    def predict(self, images: Sequence[ImageLike], *, progress: Progress | None = None) -> list[AnomalyMap]:
        """Score images: one AnomalyMap each, map at the image's own resolution."""
        self._check_fitted()
        arrays, ids = as_images(images)
        if not arrays:
            raise DataError("predict() got no images")
        out: list[AnomalyMap | None] = [None] * len(arrays)
        groups = self._shape_groups(arrays)  # images of one input shape share a forward pass and a grid shape
        t0 = time.perf_counter()
        embs = [self._embed([arrays[i] for i in idx], progress) for idx in groups]
        t1 = time.perf_counter()
        scored = self._score_groups(embs)  # all groups at once: one search call instead of one per input shape
        self.timings_["embed"] += t1 - t0
        self.timings_["score"] += time.perf_counter() - t1
        for idx, (grids, hits) in zip(groups, scored):
            maps = self._to_maps(grids, [arrays[i].shape[:2] for i in idx], [ids[i] for i in idx], hits)
            for i, amap in zip(idx, maps):
                out[i] = amap
        return out

    # subclass hooks ---------------------------------------------------------------------------------------
    def _augment(self, arrays: list[np.ndarray], ids: list[str]) -> tuple[list[np.ndarray], list[str]]:
        """Extra views of the normal images (few-shot augmentation); default none."""
        return arrays, ids

    def _calibrate(self, emb: torch.Tensor, ids: list[str]) -> float | None:
        """An image-score threshold from the normal training images; default: none."""
        return None

    def _fit_embeddings(self, emb: torch.Tensor, ids: list[str]) -> None:
        raise NotImplementedError

    def _score_embeddings(self, emb: torch.Tensor) -> tuple[torch.Tensor, list[list]]:
        """(B, h, w, C) -> (B, h, w) patch scores and, per image, the retrieval hits behind its score."""
        raise NotImplementedError

    def _score_groups(self, embs: list[torch.Tensor]) -> list[tuple[torch.Tensor, list[list]]]:
        """:meth:`_score_embeddings` of each (B_g, h_g, w_g, C) group of images of one input shape; detectors whose
        scoring is a search override it to search every group's patches in one call."""
        return [self._score_embeddings(emb) for emb in embs]

    def _is_fitted(self) -> bool:
        raise NotImplementedError

    def _state(self) -> dict[str, torch.Tensor]:
        """Learned tensors to save."""
        raise NotImplementedError

    def _load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], directory: Path) -> None:
        raise NotImplementedError

    # shared machinery -------------------------------------------------------------------------------------
    def smooth(self, grid: torch.Tensor) -> torch.Tensor:
        """The smoothed working-size map of a (h, w) or (B, h, w) patch-score grid (``sigma`` in pixels of a 256-px
        long side of one view; see :func:`smooth_grid`)."""
        embedder = getattr(self, "embedder", None)
        view = embedder.view_fraction(grid.shape[-2:]) if isinstance(embedder, PatchEmbedder) else 1.0
        return smooth_grid(grid, sigma=float(self.hyper.get("sigma", SIGMA)), view=view)

    def image_score(self, grid: torch.Tensor) -> float:
        """Image score of an (h, w) patch-score grid: :meth:`_work_score` of its smoothed map."""
        return self._work_score(self.smooth(grid))

    def _work_score(self, work: torch.Tensor) -> float:
        """Image score from a smoothed (work, work) map: its maximum by default (so a score above the threshold
        always comes with a map region above it). Subclasses may aggregate differently (e.g. top-k mean)."""
        return float(work.max())

    ragged = False  # whether _fit_embeddings / _calibrate accept a list of per-image grids of different shapes
    # (detectors without it fix their input shape to the most common one when given images of several shapes)

    def _shape_groups(self, arrays: list[np.ndarray]) -> list[list[int]]:
        """Indices of the images grouped by backbone input shape (one group unless geometry keeps aspect ratios)."""
        if isinstance(self.embedder, PatchEmbedder):
            return self.embedder.groups(arrays)
        return [list(range(len(arrays)))]

    def _embed(self, arrays: list[np.ndarray], progress: Progress | None) -> torch.Tensor | list[torch.Tensor]:
        """(B, h, w, C) grids of images of one input shape; images of several shapes (aspect-keeping geometry) give
        a list of (h_i, w_i, C) grids in input order for detectors with ``ragged = True``; the others fix the
        embedder's input shape to the most common one and get one (B, h, w, C) tensor."""
        groups = self._shape_groups(arrays)
        if len(groups) == 1:
            return self._embed_shape(arrays, progress)
        if not self.ragged:  # one grid for all: the most common input shape, recorded in the saved model
            self.embedder.set_input_shape(self.embedder.input_shape(arrays[max(groups, key=len)[0]]))
            return self._embed_shape(arrays, progress)
        out: list[torch.Tensor] = [torch.empty(0)] * len(arrays)
        for idx in groups:
            for i, grid in zip(idx, self._embed_shape([arrays[i] for i in idx], progress)):
                out[i] = grid
        return out

    def _embed_shape(self, arrays: list[np.ndarray], progress: Progress | None) -> torch.Tensor:
        """(B, h, w, C) grids of images of one input shape (detectors with their own features override this)."""
        return self.embedder(arrays, progress=progress)

    def _to_maps(self, grids: torch.Tensor, sizes: list[tuple[int, int]], ids: list[str], hits: list
                 ) -> list[AnomalyMap]:
        """AnomalyMaps from (B, h, w) patch-score grids: smoothed in one batch, resized to each image's size."""
        out = []
        for start in range(0, len(grids), 64):  # bounded memory: 64 work maps at a time
            work = self.smooth(grids[start : start + 64])
            for j, w in enumerate(work):
                i = start + j
                amap = resize_map(w, tuple(sizes[i]))
                out.append(AnomalyMap(ids[i], self._work_score(w), amap, hits=hits[i], threshold=self.threshold_))
        return out

    def _to_map(self, grid: torch.Tensor, image: np.ndarray, image_id: str, hits: list) -> AnomalyMap:
        """The AnomalyMap of one (h, w) grid for an image of ``image.shape[:2]``."""
        return self._to_maps(grid[None], [image.shape[:2]], [image_id], [hits])[0]

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            raise NotFittedError(f"{self.name} is not fitted: call fit(normal_images) or load a saved model first")

    def save(self, directory: str | Path) -> Path:
        """Write ``detector.json`` and ``detector.safetensors`` into ``directory`` (atomically, file by file)."""
        from safetensors.torch import save

        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self._state().items()}
        atomic_write_bytes(directory / "detector.safetensors", save(tensors))
        meta = {"detector": self.name, "embedder": self.embedder.config(), "hyper": self.hyper,
                "threshold": self.threshold_, "extra": self._extra_meta(directory)}
        write_meta(directory / "detector.json", kind="detector", version=FORMAT_VERSION, meta=meta)
        return directory

    def _extra_meta(self, directory: Path) -> dict[str, Any]:
        return {}

    def grid_shape(self, image_shape: tuple[int, int]) -> tuple[int, int] | None:
        """(rows, cols) of the patch grid behind this detector's hits for an image of ``image_shape`` (H, W), which
        places a hit in its exemplar image; None for detectors without a patch embedder."""
        embedder = getattr(self, "embedder_", None)
        if embedder is None or not hasattr(embedder, "grid_shape"):  # pixel-space detectors have no patch grid
            return None
        return embedder.grid_shape(tuple(image_shape))

    def point_spread(self, image_shape: tuple[int, int]) -> np.ndarray | None:
        """The map this detector draws, at an image shape (H, W), for one anomalous patch in the middle of its grid
        (:func:`vlm_ad._shapes.point_grid`, smoothed and resized as every map is): how far the map spreads a defect
        smaller than a patch, which the size estimate of the evidence takes off. None without a patch grid."""
        grid_hw = self.grid_shape(image_shape)
        if grid_hw is None:
            return None
        shape = (int(image_shape[0]), int(image_shape[1]))
        cache = self.__dict__.setdefault("_spreads", {})
        if (shape, grid_hw) not in cache:
            grid = torch.from_numpy(point_grid(grid_hw, self.embedder.pool_reach))
            cache[(shape, grid_hw)] = resize_map(self.smooth(grid), shape)
        return cache[(shape, grid_hw)]

    def summary(self) -> str:
        """One line saying how this fitted detector makes its maps (printed by ``vlm-ad fit`` and ``detect``)."""
        emb = getattr(self, "embedder_", None)
        if not isinstance(emb, PatchEmbedder):
            return self.name
        border = {"exclude": ", border cells pooled over the grid only",
                  "reflect": ", border cells pooled with mirrored cells",
                  "sqrt": ", border cells pooled at the interior's noise level"}.get(emb.pool_pad, "")
        pools = describe_pool(emb.pool)
        return (f"{self.name} on {emb.backbone_name} ({', '.join(emb.layers)}), input {emb.geometry.describe()}"
                f"{border}{pools}{self._summary_extra()}")

    def _summary_extra(self) -> str:
        return ""

    def set_threshold(self, value: float | None) -> Detector:
        """Set the image-level decision threshold (used for ``AnomalyMap.label``)."""
        self.threshold_ = None if value is None else float(value)
        return self
