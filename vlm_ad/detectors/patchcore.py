"""PatchCore (Roth et al. 2022): nearest-neighbour distance of each test patch to a memory bank of normal patches.

Full-shot or k-shot; the bank is a greedy k-center coreset of all normal patches (``coreset``), searched with
faiss (exact by default). Each image also gets its retrieval hits: the nearest normal exemplar of its most
anomalous patches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlm_ad._shapes import ring_index
from vlm_ad.detectors.base import Detector
from vlm_ad.detectors.threshold import THRESHOLD_RULES, threshold_from_normal
from vlm_ad.errors import ConfigError, DataError
from vlm_ad.retrieval import ExemplarStore

_VIEW = "#view"


class PatchCore(Detector):
    """PatchCore.

    Args:
        backbone: backbone name or instance.
        coreset: fraction of normal patches kept by the greedy k-center coreset (default 0.1, the reference's and
            anomalib's; 1.0 keeps all). At 8 shots, keeping every patch or 25% is no better across the dev suite
            (eval/results/generalization.md, "decision": better on 9-20 of the 36-37 cells of a half, and each loses
            beyond the seed spread on a dev cell), so 0.1 holds at few shots as well.
        index: faiss index kind: ``"auto"`` (default: exact up to 16,384 bank rows, HNSW above - full-shot banks),
            ``"exact"``, ``"ivf"`` or ``"hnsw"`` (see :class:`~vlm_ad.retrieval.ExemplarStore`).
        n_hits: retrieval hits kept per image (its most anomalous patches).
        augment: few-shot augmentation of the normal images: ``"none"`` or ``"flips"`` (flips and 90-degree
            rotations, 8 views per image) - only sensible for textures without a canonical orientation.
        seed: coreset seed.
        normalize: L2-normalise patch vectors before the search. ``None`` (default) picks per backbone: off for
            CNNs (as in the PatchCore paper; on magnetic_tile 8-shot EfficientNet-Lite0 it lifts image AUROC
            0.769 -> 0.806 and pixel AUROC 0.681 -> 0.745, AUPRO 0.677 -> 0.658, mean of 3 seeds), on for ViTs
            (DINOv2's token norms vary a lot between positions).
        threshold_rule: how the image threshold is set from the normal images' leave-image-out scores:
            ``"mean+1sd"`` (default; right more often with 4-8 shots across the dev suite, eval/results/thresholds.md)
            or ``"q99"`` (their 0.99 quantile, the earlier default: with few shots it is their maximum).
        rings: border rings of the patch grid whose scores are rescaled (0, the default: off). At fit, each of the
            ``rings`` outer rings of cells gets the factor that brings its mean leave-image-out score on the normal
            images to the interior's, so a border that the network's padding makes noisier than the interior stops
            outranking real defects (eval/results/generalization.md: square-set AUPRO 0.739 -> 0.812 with 3, no loss
            beyond the seed spread anywhere, but a tie on most sets, so not the default).
        ring_cap: the largest factor a ring may get (1, the default: rings are only damped; None: no cap).
        **hyper: embedder settings (``layers``, ``image_size``, ``geometry``, ``min_side``, ``max_downscale``,
            ``tile``, ``pool``, ``pool_pad``; see :class:`~vlm_ad.detectors.base.PatchEmbedder`; dinov2-s14 defaults to
            :attr:`default_input`) and ``sigma`` (map smoothing).
    """

    name = "patchcore"
    ragged = True  # the bank takes patches of grids of any shape
    # dinov2-s14: the pixel count of a 364-px square at the image's aspect ratio, short side at least 224 (DINOv2's
    # native side), images more than 3x the input shrunk only 3x (a 1536 x 2048 image is seen at 518 x 686, not
    # 308 x 420; 600 x 800 ones at 308 x 420). Chosen on eval/results/generalization.md's dev suite against the `area`
    # 280 input it replaced (2026-12-03): better on 13 of 21 dev cells and 19 of 21 unseen ones of the sets where the
    # input differs, worse nowhere beyond the seed spread; against the reference PatchCore (long side 448, block 7) 29
    # of 30 cells (was 20; coins image AUROC still -0.030). `area` 336 lost magnetic_tile's dev pixel AUROC beyond the
    # spread; the reference's long side 448 lost the 1,200-px gravel set. 2.0-2.1x the time of `area` 280 on 3:4 and
    # square images, 3.1-3.7x square 224's (eval/results/geometry_speed_dinov2_364.md); `image_size=280` gives the
    # input of before (which beat square 224 on 14 of 18 cells).
    default_input = {"dinov2-s14": {"geometry": "area", "image_size": 364, "min_side": 224, "max_downscale": 3}}

    def __init__(self, backbone="efficientnet-lite0", *, coreset: float = 0.1, index: str = "auto",
                 n_hits: int = 5, augment: str = "none", seed: int = 0, normalize: bool | None = None,
                 threshold_rule: str = "mean+1sd", rings: int = 0, ring_cap: float | None = 1.0,
                 **hyper: Any) -> None:
        if augment not in ("none", "flips"):
            raise ConfigError(f"augment must be 'none' or 'flips', got {augment!r}")
        if threshold_rule not in THRESHOLD_RULES:
            raise ConfigError(f"threshold_rule must be one of {THRESHOLD_RULES}, got {threshold_rule!r}")
        numbers = isinstance(coreset, (int, float)) and isinstance(n_hits, int)  # wrong types: create_detector says
        if numbers and (not 0 < coreset <= 1 or n_hits < 1):
            raise ConfigError(f"patchcore needs coreset a fraction in (0, 1] (1 = keep every patch) and n_hits >= 1, "
                              f"got coreset={coreset}, n_hits={n_hits}")
        if not isinstance(rings, int) or isinstance(rings, bool) or rings < 0:
            raise ConfigError(f"patchcore needs rings an integer >= 0, got {rings!r}")
        if ring_cap is not None and (isinstance(ring_cap, bool) or not isinstance(ring_cap, (int, float))
                                     or ring_cap <= 0):
            raise ConfigError(f"patchcore needs ring_cap a number > 0 or None, got {ring_cap!r}")
        super().__init__(backbone, coreset=coreset, index=index, n_hits=n_hits, augment=augment, seed=seed,
                         normalize=normalize, threshold_rule=threshold_rule, rings=rings, ring_cap=ring_cap,
                         **hyper)
        self.store_: ExemplarStore | None = None
        self.ring_factors_: torch.Tensor | None = None  # (rings + 1,): score scale per border ring, interior last

    def _make_embedder(self):
        emb = super()._make_embedder()
        normalize = self.hyper["normalize"]  # None: on for ViTs, off for CNNs (as the PatchCore paper)
        emb.normalize = not emb.backbone_name.startswith("efficientnet") if normalize is None else bool(normalize)
        return emb

    def _augment(self, arrays, ids):
        if self.hyper["augment"] != "flips":
            return arrays, ids
        views = [np.ascontiguousarray(v) for a in arrays for k in range(4)
                 for v in (np.rot90(a, k), np.rot90(a, k)[:, ::-1])]
        return views, [f"{i}{_VIEW}{v}" for i in ids for v in range(8)]

    def _fit_embeddings(self, emb: torch.Tensor, ids: list[str]) -> None:
        if len(ids) == 0:
            raise DataError("patchcore needs at least one normal image to fit (use 'mutual' for zero-shot)")
        h = self.hyper
        store = ExemplarStore(index=h["index"], coreset=None if h["coreset"] >= 1 else h["coreset"], seed=h["seed"])
        for grid, image_id in zip(emb, ids):
            store.add(image_id, grid)
        self.store_ = store.build()

    def _calibrate(self, emb: torch.Tensor, ids: list[str]) -> float | None:
        """The ``threshold_rule`` over the leave-image-out scores of (up to 32) normal training images; None with one
        image."""
        base = [i.split(_VIEW)[0] for i in ids]
        if len(set(base)) < 2:
            return None
        pick = [j for j, i in enumerate(ids) if _VIEW not in i or i.endswith(f"{_VIEW}0")][:32]
        grids = [self.leave_image_out_scores(emb[j][None], [base[j]])[0] for j in pick]  # grids may differ in shape
        if self.hyper.get("rings", 0):
            self.ring_factors_ = self._fit_rings(grids)
            grids = [self._scale_rings(g) for g in grids]
        scores = [self.image_score(g) for g in grids if not torch.isnan(g).any()]
        self.calibration_scores_ = np.array(scores)  # leave-image-out scores of normal images (other policies)
        return threshold_from_normal(self.calibration_scores_, self.hyper["threshold_rule"]) if scores else None

    def _ring_index(self, gh: int, gw: int) -> torch.Tensor:
        """(gh, gw) ring of each cell: its distance in cells to the grid's border, ``rings`` for the interior."""
        return torch.from_numpy(ring_index((gh, gw), int(self.hyper["rings"])))

    def _fit_rings(self, grids: list[torch.Tensor]) -> torch.Tensor | None:
        """Scale per ring that brings the normal images' mean leave-image-out score of each border ring to the
        interior's (a border cell sees fewer neighbours and the network's padding: its distances differ), at most
        ``ring_cap`` (1: rings noisier than the interior are damped, quieter ones left alone)."""
        n = int(self.hyper["rings"])
        sums, counts = torch.zeros(n + 1), torch.zeros(n + 1)
        for g in grids:
            if torch.isnan(g).any():
                continue
            idx = self._ring_index(*g.shape).reshape(-1)
            sums.index_add_(0, idx, g.reshape(-1).float())
            counts.index_add_(0, idx, torch.ones(idx.numel()))
        if counts[n] == 0 or (counts == 0).any():
            return None  # grids too small for an interior: no scaling
        means = sums / counts
        factors = means[n] / means.clamp(min=1e-12)
        cap = self.hyper.get("ring_cap", 1.0)
        return (factors if cap is None else factors.clamp(max=float(cap))).float()

    def _scale_rings(self, grid: torch.Tensor) -> torch.Tensor:
        """Grid(s) (..., gh, gw) scaled by their ring's factor."""
        if self.ring_factors_ is None:
            return grid
        return grid * self.ring_factors_[self._ring_index(*grid.shape[-2:])]

    def _score_embeddings(self, emb: torch.Tensor):
        return self._score_groups([emb])[0]

    def _summary_extra(self) -> str:
        if self.ring_factors_ is None:
            return ""
        return f", border rings scaled {' / '.join(f'{v:.2f}' for v in self.ring_factors_[:-1].tolist())}"

    def _score_groups(self, embs: list[torch.Tensor]) -> list[tuple[torch.Tensor, list[list]]]:
        """Nearest-exemplar distances of the patches of every group in one search (a faiss call per input shape,
        with a few hundred queries each, cost 2-3x more per query on 2 busy cores than one call with all of them)."""
        c = embs[0].shape[-1]
        dist, rows = self.store_.search(torch.cat([e.reshape(-1, c) for e in embs]), k=1)
        out, start = [], 0
        for emb in embs:
            b, gh, gw, _ = emb.shape
            n = b * gh * gw
            grids, group_rows = dist[start : start + n, 0].reshape(b, gh, gw), rows[start : start + n, 0].reshape(b, -1)
            grids = self._scale_rings(grids)
            start += n
            hits = []
            for i in range(b):
                flat = grids[i].reshape(-1)
                top = torch.topk(flat, min(self.hyper["n_hits"], gh * gw)).indices
                hits.append([self.store_.hit(int(group_rows[i, j]), float(flat[j])) for j in top])
            out.append((grids, hits))
        return out

    def leave_image_out_scores(self, emb: torch.Tensor, ids: list[str], *, chunk: int = 512) -> torch.Tensor:
        """Patch scores of training images against the bank without any patch of the same image (any view).

        Exact: each image is searched against the bank rows of the *other* images (a plain k-NN with masking
        fails here, since a patch's nearest rows are usually all its own pooled neighbours).
        """
        b, gh, gw, c = emb.shape
        bank = self.store_.bank_
        bank_base = np.array([x.split(_VIEW)[0] for x in self.store_.image_ids])
        row_base = bank_base[self.store_.tags_[:, 0].numpy()]
        out = torch.full((b, gh * gw), float("nan"))
        for i, image_id in enumerate(ids):
            others = bank[torch.from_numpy(row_base != image_id)]
            if len(others) == 0:
                continue
            q = emb[i].reshape(-1, c)
            out[i] = torch.cat([torch.cdist(q[j : j + chunk], others).min(dim=1).values
                                for j in range(0, len(q), chunk)])
        return out.reshape(b, gh, gw)

    def _is_fitted(self) -> bool:
        return self.store_ is not None

    def _state(self) -> dict[str, torch.Tensor]:
        return {"_": torch.zeros(1)} | ({} if self.ring_factors_ is None else {"ring_factors": self.ring_factors_})

    def _extra_meta(self, directory: Path) -> dict[str, Any]:
        self.store_.save(directory)
        return {"store": "store.json"}

    def _load_state(self, tensors, meta, directory: Path) -> None:
        self.store_ = ExemplarStore.load(directory)
        self.ring_factors_ = tensors.get("ring_factors")
