"""Zero-shot mutual scoring (the MuSc idea, Li et al. 2024): a patch that finds no close match in *other*
images of the same category is anomalous. No normal image is needed.

References of a test image, in order of preference: the normal images given to ``fit`` (if any), else the
other images of the same ``predict`` batch, topped up from a rolling buffer of recently seen images. A single
image with nothing to compare against is scored against itself: each patch against the patches of the same
image outside a window around it (weaker; a warning is recorded in ``last_mode_``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from vlm_ad.detectors.base import DEFAULT_LAYERS, Detector, as_images
from vlm_ad.errors import ConfigError, DataError
from vlm_ad.types import ExemplarHit


class Mutual(Detector):
    """Mutual patch scoring between images.

    Args:
        backbone: backbone name or instance (default ``dinov2-s14`` blocks 5 and 7, input :attr:`default_input`).
        n_ref: reference images per test image.
        frac: the score of a patch is the mean of its ``ceil(frac * n_ref)`` smallest per-reference distances
            (a defect shared by a few references is still found).
        buffer: size of the rolling buffer of recently seen images.
        exclude: half-width (in patches) of the window ignored in single-image self-scoring.
        seed: seed for choosing references.
    """

    name = "mutual"
    ragged = True  # references may have grids of other shapes than the query
    # dinov2-s14: the pixel count of a 224-px square at the image's aspect ratio, short side at least 224 (square
    # images are seen as at square 224, others keep their aspect ratio and grow: 3:4 at 224 x 294, 320 x 800 at
    # 224 x 560). Against square 224 in eval/results/generalization.md (zero-shot, deterministic) it is better on
    # 10 of 15 dev cells and 9 of 15 unseen ones and worse on none, and lifts pixel AUROC on the small-defect objects
    # above 0.95 (coffee 0.939 -> 0.958); area 280 lost square-set image AUROC and AUPRO. Images more than 3x the
    # input's long side are shrunk only 3x, as for PatchCore (a 1536 x 2048 image is seen at 518 x 686, not
    # 224 x 298): on the 1,200- and 2,048-px sets it beat the input without it on 12 of 15 cells of each half and lost
    # none (max_downscale 4: also no loss, but behind 3 on 11-12 of 15), at 9-13x the time on a 2,048-px image
    # (mutual compares every patch with every reference patch; geometry_speed_dinov2_mutual_large.md)
    default_input = {"dinov2-s14": {"geometry": "area", "image_size": 224, "min_side": 224, "max_downscale": 3}}

    def __init__(self, backbone="dinov2-s14", *, n_ref: int = 16, frac: float = 0.3, buffer: int = 32,
                 exclude: int = 2, seed: int = 0, **hyper: Any) -> None:
        if n_ref < 1 or not 0 < frac <= 1 or buffer < 0:
            raise ConfigError(f"mutual needs n_ref >= 1, 0 < frac <= 1, buffer >= 0; got {n_ref}, {frac}, {buffer}")
        if isinstance(backbone, str) and "layers" not in hyper and backbone in DEFAULT_LAYERS:
            hyper["layers"] = DEFAULT_LAYERS[backbone]
        super().__init__(backbone, n_ref=n_ref, frac=frac, buffer=buffer, exclude=exclude, seed=seed, **hyper)
        self.normal_: torch.Tensor | list[torch.Tensor] | None = None  # (N, h, w, C), or N grids of varying shapes
        self.normal_ids_: list[str] = []
        self._buffer: list[tuple[str, torch.Tensor]] = []
        self.last_mode_ = ""

    def _fit_embeddings(self, emb: torch.Tensor, ids: list[str]) -> None:
        self.normal_ = emb if len(ids) else torch.empty(0)
        self.normal_ids_ = list(ids)

    def _is_fitted(self) -> bool:
        return self.normal_ is not None

    def predict(self, images, *, progress=None):
        """Score images; every image of the call is a reference for the others, whatever its input shape."""
        if self.normal_ is None:  # zero-shot needs no fit: predict builds what fit would
            self._ensure_embedder()
            self.normal_ = torch.empty(0)
        arrays, ids = as_images(images)
        if not arrays:
            raise DataError("predict() got no images")
        t0 = time.perf_counter()
        grids: list[torch.Tensor] = [torch.empty(0)] * len(arrays)
        for idx in self._shape_groups(arrays):  # one forward pass per input shape
            for i, grid in zip(idx, self._embed([arrays[i] for i in idx], progress)):
                grids[i] = grid
        t1 = time.perf_counter()
        scores, hits = self._score_grids(grids)
        self.timings_["embed"] += t1 - t0
        self.timings_["score"] += time.perf_counter() - t1
        out: list = [None] * len(arrays)
        for shape in {tuple(g.shape) for g in scores}:  # maps are smoothed in batches of one grid shape
            idx = [i for i, g in enumerate(scores) if tuple(g.shape) == shape]
            maps = self._to_maps(torch.stack([scores[i] for i in idx]), [arrays[i].shape[:2] for i in idx],
                                 [ids[i] for i in idx], [hits[i] for i in idx])
            for i, amap in zip(idx, maps):
                out[i] = amap
        return out

    def _references(self, i: int, emb: torch.Tensor, ids: list[str], gen: torch.Generator):
        n_ref = self.hyper["n_ref"]
        if len(self.normal_ids_):
            pool = [(x, self.normal_[j]) for j, x in enumerate(self.normal_ids_)]
        else:
            pool = [(ids[j], emb[j]) for j in range(len(emb)) if j != i]
            if len(pool) < n_ref:
                pool += self._buffer[-(n_ref - len(pool)) :]
        if len(pool) > n_ref:
            pick = torch.randperm(len(pool), generator=gen)[:n_ref].tolist()
            pool = [pool[j] for j in sorted(pick)]
        return pool

    def _score_embeddings(self, emb: torch.Tensor):
        grids, hits = self._score_grids(list(emb))
        return torch.stack(grids), hits

    def _score_grids(self, emb: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[list]]:
        """Patch scores (h_i, w_i) and hits of each (h_i, w_i, C) grid against the other grids (any shapes)."""
        ids = [f"batch:{j}" for j in range(len(emb))]
        gen = torch.Generator().manual_seed(self.hyper["seed"])
        grids, hits, modes = [], [], set()
        # one distance matrix per pair of batch images, read both ways: (query, reference) -> nearest distances, indices
        pairs: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        for i in range(len(emb)):
            refs = self._references(i, emb, ids, gen)
            h, w, c = emb[i].shape
            q = emb[i].reshape(-1, c)  # (P, C)
            if refs:
                g, hit = self._mutual(q, refs, h, w, qid=ids[i], pairs=pairs)
                modes.add("normal images" if self.normal_ids_ else "other images")
            else:
                g, hit = self._self_score(q, h, w), []
                modes.add("single image (self-similarity)")
            grids.append(g)
            hits.append(hit)
        self._remember(emb, ids)
        self.last_mode_ = ", ".join(sorted(modes))
        return grids, hits

    def _mutual(self, q: torch.Tensor, refs, h: int, w: int, *, qid: str = "", pairs: dict | None = None):
        """Each query patch's distance to its nearest patch in each reference, and the query's hits. ``pairs`` holds
        the nearest distances a later batch image (a ``batch:`` reference) has to this query, read off the same
        distance matrix (its minimum over the other axis), so each pair of batch images is compared once."""
        dists, where = [], []
        for rid, r in refs:
            if pairs is not None and (qid, rid) in pairs:
                values, indices = pairs.pop((qid, rid))
            else:
                d = torch.cdist(q, r.reshape(-1, r.shape[-1]))  # (P, P_r)
                values, indices = d.min(dim=1)
                if pairs is not None and rid.startswith("batch:") and qid.startswith("batch:"):
                    pairs[(rid, qid)] = tuple(d.min(dim=0))  # the reference's patches against this query
            dists.append(values)
            where.append(indices)
        dists = torch.stack(dists)  # (R, P)
        k = max(1, int(-(-self.hyper["frac"] * len(refs) // 1)))
        grid = dists.sort(dim=0).values[:k].mean(0).reshape(h, w)
        flat = grid.reshape(-1)
        top = torch.topk(flat, min(5, flat.numel())).indices
        hits = []
        for p in top.tolist():
            r = int(dists[:, p].argmin())
            loc = int(where[r][p])
            ref_w = refs[r][1].shape[1]  # the reference's own grid width (aspect geometry: it may differ)
            hits.append(ExemplarHit(refs[r][0], loc // ref_w, loc % ref_w, float(dists[r, p])))
        return grid, hits

    def _self_score(self, q: torch.Tensor, h: int, w: int) -> torch.Tensor:
        d = torch.cdist(q, q)  # (P, P)
        rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
        near = ((rows[:, None] - rows[None]).abs() <= self.hyper["exclude"]) & (
            (cols[:, None] - cols[None]).abs() <= self.hyper["exclude"]
        )
        return d.masked_fill(near, float("inf")).min(dim=1).values.reshape(h, w)

    def _remember(self, emb: torch.Tensor, ids: list[str]) -> None:
        if self.hyper["buffer"] == 0:
            return
        n = len(self._buffer)
        self._buffer += [(f"recent:{n + j}", emb[j]) for j in range(len(emb))]
        self._buffer = self._buffer[-self.hyper["buffer"] :]

    def _state(self) -> dict[str, torch.Tensor]:
        if isinstance(self.normal_, torch.Tensor):
            return {"normal": self.normal_.contiguous()}
        return {f"normal.{i}": g.contiguous() for i, g in enumerate(self.normal_)}  # grids of different shapes

    def _extra_meta(self, directory: Path) -> dict[str, Any]:
        return {"normal_ids": self.normal_ids_}

    def _load_state(self, tensors, meta, directory: Path) -> None:
        self.normal_ = tensors["normal"] if "normal" in tensors else [
            tensors[f"normal.{i}"] for i in range(len(meta["extra"]["normal_ids"]))]
        self.normal_ids_ = list(meta["extra"]["normal_ids"])
