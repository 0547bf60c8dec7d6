"""``ensemble``: PatchCore on two or more backbones, their maps averaged on a scale set by normal data.

A CNN (efficientnet-lite0) and a ViT (DINOv2-S/14) see an image differently: the one local texture, the other patch
semantics at a coarser grid. Where one errs the other often does not, so their mean map is a better map on more kinds
of data than either (eval/results/probes.md, "Two backbones' maps averaged"; the 13 sets of the generalization
suite, 8 shots, seeds 0-2): mean image AUROC / pixel AUROC / AUPRO over the sets 0.928 / 0.957 / 0.887 (dev half) and
0.950 / 0.966 / 0.912 (unseen half) against 0.905 / 0.957 / 0.881 and 0.931 / 0.963 / 0.892 for efficientnet-lite0
alone; it beat that on 20 and 16 of 37 (set, metric) cells (11 level each) and DINOv2 alone on 22 and 30. It is not
the default: it costs both backbones' time (4.3-8.0x efficientnet-lite0's, eval/results/geometry_speed_ensemble.md)
and lost to efficientnet-lite0 beyond the seed spread on the 1,200-px gravel set's dev half (pixel AUROC -0.044, AUPRO
-0.067).

Each member is a :class:`~vlm_ad.detectors.patchcore.PatchCore` with its backbone's own default input (or the input
settings given, for every member). The members' maps are on different scales (distances between different
features), so each is divided by the mean of its own normal images' leave-image-out scores (what its threshold is made
from): 1 is a typical normal image's strongest response for every member. The ensemble's map is the mean of the
scaled maps at the image's resolution, its score the map's maximum (so a score above the threshold always comes with a
map region above it), and its threshold the detector's ``threshold_rule`` over the normal images' leave-image-out
maps mixed the same way. The nearest normal exemplars behind each judgment are the first member's.

    vlm-ad fit DATA --detector ensemble --out DIR                      # efficientnet-lite0+dinov2-s14
    vlm-ad fit DATA --detector ensemble --backbone efficientnet-lite0+dinov2-s14 -o coreset=1.0 --out DIR
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vlm_ad.detectors.base import FORMAT_VERSION, Detector, as_images, resize_map
from vlm_ad.detectors.patchcore import PatchCore
from vlm_ad.detectors.threshold import THRESHOLD_RULES, threshold_from_normal
from vlm_ad.errors import ConfigError, DataError
from vlm_ad.types import AnomalyMap

DEFAULT_MEMBERS = "efficientnet-lite0+dinov2-s14"
_CALIBRATION_IMAGES = 32  # as PatchCore: the leave-image-out scores of up to 32 normal images


def _names(backbone: Any) -> list[str]:
    names = [b.strip() for b in str(backbone).split("+")] if backbone is not None else DEFAULT_MEMBERS.split("+")
    if len(names) < 2 or any(not b for b in names) or len(set(names)) != len(names):
        raise ConfigError(f"ensemble needs two or more different backbones joined by '+', e.g. {DEFAULT_MEMBERS!r}; "
                          f"got {backbone!r}")
    return names


class Ensemble(Detector):
    """Mean of PatchCore maps over several backbones, each scaled by its normal images' leave-image-out scores."""

    name = "ensemble"

    def __init__(self, backbone: str | None = DEFAULT_MEMBERS, *, coreset: float = 0.1, index: str = "auto",
                 n_hits: int = 5, seed: int = 0, threshold_rule: str = "mean+1sd", **hyper: Any) -> None:
        names = _names(backbone)
        if threshold_rule not in THRESHOLD_RULES:
            raise ConfigError(f"threshold_rule must be one of {THRESHOLD_RULES}, got {threshold_rule!r}")
        if "layers" in hyper:
            raise ConfigError("ensemble members use their own backbones' layers; 'layers' cannot be set for all")
        super().__init__("+".join(names), coreset=coreset, index=index, n_hits=n_hits, seed=seed,
                         threshold_rule=threshold_rule, **hyper)
        self.members_: list[PatchCore] | None = None
        self.scales_: np.ndarray | None = None  # per member: mean leave-image-out score of the normal images
        self.calibration_scores_: np.ndarray | None = None

    @property
    def backbones(self) -> list[str]:
        return self.backbone.split("+")

    def _member(self, backbone: str) -> PatchCore:
        return PatchCore(backbone, **self.hyper)

    # contract -----------------------------------------------------------------------------------------------
    def fit(self, normal_images, *, progress=None) -> Ensemble:
        arrays, ids = as_images(normal_images)
        if len(set(ids)) < 2:
            raise DataError(f"ensemble needs at least 2 normal images (it puts its members on one scale by their "
                            f"normal images' leave-image-out scores), got {len(set(ids))}")
        members, loo = [], []
        share = _share(progress, len(self.backbones))
        for backbone in self.backbones:  # PatchCore.fit's steps, keeping the embeddings for the calibration maps
            m = self._member(backbone)
            m._ensure_embedder()
            emb = m._embed(arrays, share)
            m._fit_embeddings(emb, ids)
            m.threshold_ = m._calibrate(emb, ids)
            members.append(m)
            loo.append(self._loo_maps(m, emb, arrays, ids))
        scales = np.array([float(np.mean([float(x.max()) for x in maps])) for maps in loo])
        if not np.all(np.isfinite(scales)) or np.any(scales <= 0):
            raise DataError(f"ensemble: a member's normal scores give no usable scale ({scales.tolist()}); are the "
                            "normal images all identical?")
        self.members_, self.scales_ = members, scales
        mixed = [self._mix([maps[j] for maps in loo]) for j in range(len(loo[0]))]
        self.calibration_scores_ = np.array([float(m.max()) for m in mixed])
        self.threshold_ = threshold_from_normal(self.calibration_scores_, self.hyper["threshold_rule"])
        return self

    @staticmethod
    def _loo_maps(m: PatchCore, emb, arrays: list[np.ndarray], ids: list[str]) -> list[np.ndarray]:
        """The member's leave-image-out maps of (up to 32) normal images, at each image's resolution."""
        out = []
        for j, (a, image_id) in enumerate(list(zip(arrays, ids))[:_CALIBRATION_IMAGES]):
            grid = m.leave_image_out_scores(emb[j][None], [image_id])[0]
            if m.hyper.get("rings", 0):
                grid = m._scale_rings(grid)
            out.append(resize_map(m.smooth(grid), a.shape[:2]))
        return out

    def _mix(self, maps: Sequence[np.ndarray]) -> np.ndarray:
        return (sum(mp / s for mp, s in zip(maps, self.scales_)) / len(maps)).astype(np.float32)

    def predict(self, images, *, progress=None) -> list[AnomalyMap]:
        self._check_fitted()
        arrays, ids = as_images(images)
        if not arrays:
            raise DataError("predict() got no images")
        share = _share(progress, len(self.members_))
        per_member = [m.predict(arrays_with_ids(arrays, ids), progress=share) for m in self.members_]
        for key in self.timings_:
            self.timings_[key] = sum(m.timings_[key] for m in self.members_)
        out = []
        for i, image_id in enumerate(ids):
            amap = self._mix([maps[i].map for maps in per_member])
            out.append(AnomalyMap(image_id, float(amap.max()), amap, hits=per_member[0][i].hits,
                                  threshold=self.threshold_))
        return out

    def _is_fitted(self) -> bool:
        return self.members_ is not None

    # what the evidence asks of a detector ------------------------------------------------------------------
    def grid_shape(self, image_shape: tuple[int, int]) -> tuple[int, int] | None:
        """The first member's grid: its hits are the ones the maps carry."""
        self._check_fitted()
        return self.members_[0].grid_shape(image_shape)

    def point_spread(self, image_shape: tuple[int, int]) -> np.ndarray | None:
        """The first member's point spread (the map of one anomalous patch), which the size estimate takes off a
        region's effective area. Chosen on the QA benchmark's synthetic dev suite (8 sets; magnetic_tile held out),
        size accuracy of the product's size rule on the ensemble's maps: the first member's (efficientnet-lite0)
        0.687, the mean of the members' spreads at peak 1 0.637, DINOv2's 0.598 (with the size rule before, the
        core at 0.6 less the spread's core: 0.608, 0.572, 0.526; eval/probe_ensemble_spread.py)."""
        self._check_fitted()
        return self.members_[0].point_spread(image_shape)

    def summary(self) -> str:
        if not self._is_fitted():
            return self.name
        parts = "; ".join(f"{m.summary()}, divided by {s:.4g}" for m, s in zip(self.members_, self.scales_))
        return f"ensemble: the mean of the scaled maps of {parts}"  # no brackets: rich would read them as markup

    # persistence --------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Each member in ``member-K/``; the scales and calibration in ``detector.safetensors``."""
        from safetensors.torch import save

        from vlm_ad._cache import atomic_write_bytes
        from vlm_ad.artifacts import write_meta

        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        names = [f"member-{k}" for k in range(len(self.members_))]
        for m, name in zip(self.members_, names):
            m.save(directory / name)
        tensors = {"scales": torch.from_numpy(self.scales_.astype(np.float64)),
                   "calibration": torch.from_numpy(self.calibration_scores_.astype(np.float64))}
        atomic_write_bytes(directory / "detector.safetensors", save(tensors))
        meta = {"detector": self.name, "backbone": self.backbone, "members": names, "hyper": self.hyper,
                "threshold": self.threshold_}
        write_meta(directory / "detector.json", kind="detector", version=FORMAT_VERSION, meta=meta)
        return directory

    @classmethod
    def load(cls, directory: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Ensemble:
        from vlm_ad.detectors import load_detector

        det = cls(meta["backbone"], **meta["hyper"])
        members = [load_detector(directory / name) for name in meta["members"]]
        if [m.backbone for m in members] != det.backbones or any(not isinstance(m, PatchCore) for m in members):
            raise ConfigError(f"{directory / 'detector.json'}: its members do not match its backbones "
                              f"{det.backbones}; re-create the model with 'vlm-ad fit'")
        det.members_ = members
        det.scales_ = tensors["scales"].numpy()
        det.calibration_scores_ = tensors["calibration"].numpy()
        return det


def _share(progress, k: int):
    """A progress callback that each of ``k`` members advances by its share, so a bar ends at its total once."""
    return None if progress is None else (lambda n: progress(n / k))


def arrays_with_ids(arrays: list[np.ndarray], ids: list[str]) -> list:
    """Images with their ids, as a member's predict takes them (so the maps keep the caller's ids)."""
    from vlm_ad.types import Sample

    return [Sample(a, i) for a, i in zip(arrays, ids)]


__all__ = ["DEFAULT_MEMBERS", "Ensemble"]
