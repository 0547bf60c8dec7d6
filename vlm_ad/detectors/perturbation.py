"""Input-perturbation detectors (survey family "input perturbation"): Mahalanobis (Lee et al. 2018) and ODIN-style.

Both score backbone patch features with a differentiable function, then move the input one small step
``x' = x - epsilon * sign(grad_x sum(patch scores))`` - towards "more normal" - and score again. Normal regions,
which the fitted model knows, move further towards normal than anomalous ones (the paper's argument), so:

``map="perturbed"``  the patch scores of the perturbed input (Lee et al.'s score; the default)
``map="change"``     the per-patch score change ``score(x) - score(x')``

``epsilon=0`` (and ``predict_layers`` on cached features) gives the same score without the perturbation, so the
benchmark can say whether the perturbation helps.

``mahalanobis``  one Gaussian over all normal patch features (tied covariance, position-free); score = distance
``odin``         k-means prototypes of normal patches; score = -log max softmax(cosine / temperature)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from vlm_ad.detectors.base import Detector, ImageLike, as_images
from vlm_ad.detectors.gradcam import cam_from
from vlm_ad.errors import ConfigError, DataError
from vlm_ad.types import AnomalyMap

_MAPS = ("perturbed", "change")


class _Perturbed(Detector):
    """Shared: gradient-sign input perturbation around a differentiable patch score ``_patch_scores``."""

    def __init__(self, backbone, *, epsilon: float, map: str, max_patches: int, seed: int, **hyper: Any) -> None:
        if epsilon < 0 or map not in _MAPS:
            raise ConfigError(f"{self.name}: epsilon must be >= 0 and map one of {_MAPS}, got {epsilon}, {map!r}")
        if hyper.get("tile"):
            raise ConfigError(f"{self.name}: the input perturbation needs whole-image inputs; use tile=None")
        super().__init__(backbone, epsilon=epsilon, map=map, max_patches=max_patches, seed=seed, **hyper)

    def _patches(self, emb: torch.Tensor) -> torch.Tensor:
        """(N, h, w, C) -> at most ``max_patches`` rows (N*h*w, C), a seeded subsample."""
        if len(emb) == 0:
            raise DataError(f"{self.name} needs normal images to fit (use 'mutual' for zero-shot)")
        x = emb.reshape(-1, emb.shape[-1])
        if len(x) > self.hyper["max_patches"]:
            gen = torch.Generator().manual_seed(self.hyper["seed"])
            x = x[torch.randperm(len(x), generator=gen)[: self.hyper["max_patches"]]]
        return x

    def _score_embeddings(self, emb: torch.Tensor):
        with torch.no_grad():
            return self._patch_scores(emb), [[] for _ in range(len(emb))]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input (B, 3, S, S) -> aggregated patch embeddings (B, h, w, C), differentiable."""
        return self.embedder.aggregate(self.embedder.net(x))

    def perturbed_grids(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch scores (B, h, w) of the input and of the perturbed input."""
        x = x.clone().requires_grad_(True)
        with torch.enable_grad():
            clean = self._patch_scores(self._forward(x))
            (grad,) = torch.autograd.grad(clean.sum(), x)
        with torch.no_grad():
            moved = self._patch_scores(self._forward(x - self.hyper["epsilon"] * grad.sign()))
        return clean.detach(), moved

    def predict(self, images: Sequence[ImageLike], *, progress=None) -> list[AnomalyMap]:
        """Score images with the input perturbation (``epsilon=0``: the plain score, no gradient)."""
        if self.hyper["epsilon"] == 0:
            return super().predict(images, progress=progress)
        self._check_fitted()
        arrays, ids = as_images(images)
        if not arrays:
            raise DataError("predict() got no images")
        self.embedder.net.eval()
        out = [None] * len(arrays)
        for chunk, idx in self._chunks(arrays):
            clean, moved = self.perturbed_grids(self._input(chunk))
            grids = moved if self.hyper["map"] == "perturbed" else clean - moved
            for g, a, i in zip(grids, chunk, idx):
                out[i] = self._to_map(g.cpu(), a, ids[i], [])
            if progress:
                progress(len(chunk))
        return out

    def _chunks(self, arrays):
        """(images, indices) in chunks of 8 images of one input shape."""
        for group in self._shape_groups(arrays):
            for start in range(0, len(group), 8):
                idx = group[start : start + 8]
                yield [arrays[i] for i in idx], idx

    def _input(self, chunk) -> torch.Tensor:
        """The normalised backbone input (B, 3, H, W) of images of one input shape."""
        net = self.embedder.net
        return net.preprocess(chunk, size=self.embedder.input_shape(chunk[0])).to(net.device)

    def attention_maps(self, images: Sequence[ImageLike]) -> list[AnomalyMap]:
        """Grad-CAM of the image's mean patch score over the aggregated backbone features (the last layer used)."""
        self._check_fitted()
        arrays, ids = as_images(images)
        self.embedder.net.eval()
        out = [None] * len(arrays)
        for chunk, idx in self._chunks(arrays):
            with torch.enable_grad():
                x = self._input(chunk).requires_grad_(True)
                emb = self._forward(x).permute(0, 3, 1, 2)  # (B, C, h, w)
                scores = self._patch_scores(emb.permute(0, 2, 3, 1))
                cam = cam_from(emb, scores.flatten(1).mean(1)).detach().cpu()
            for c, s, a, i in zip(cam, scores.detach().cpu(), chunk, idx):
                m = self._to_map(c, a, ids[i], [])
                m.score = self.image_score(s)
                out[i] = m
        return out


class Mahalanobis(_Perturbed):
    """Mahalanobis distance of each patch to one Gaussian of normal patches, with input perturbation.

    Args:
        backbone: backbone name or instance.
        epsilon: perturbation step in the backbone's normalised input units (0 = no perturbation).
        map: ``"perturbed"`` or ``"change"`` (see the module docstring).
        shrinkage: ridge ``shrinkage * mean variance`` added to the covariance.
        max_patches: normal patches used to fit (seeded subsample).
        seed: subsample seed.
        **hyper: embedder settings (``layers``, ``image_size``, ``pool``) and ``sigma``.
    """

    name = "mahalanobis"
    raw_features = True

    def __init__(self, backbone="efficientnet-lite0", *, epsilon: float = 0.002, map: str = "perturbed",
                 shrinkage: float = 0.01, max_patches: int = 200_000, seed: int = 0, **hyper: Any) -> None:
        super().__init__(backbone, epsilon=epsilon, map=map, shrinkage=shrinkage, max_patches=max_patches, seed=seed,
                         **hyper)
        self.mean_: torch.Tensor | None = None

    def _fit_embeddings(self, emb: torch.Tensor, ids: list[str]) -> None:
        x = self._patches(emb).double()
        self.mean_ = x.mean(0)
        cov = torch.cov(x.T) if len(x) > 1 else torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype)
        ridge = self.hyper["shrinkage"] * max(float(cov.diagonal().mean()), 1e-6)
        self.precision_ = torch.linalg.inv(cov + ridge * torch.eye(len(cov), dtype=cov.dtype)).float()
        self.mean_ = self.mean_.float()

    def _patch_scores(self, emb: torch.Tensor) -> torch.Tensor:
        d = emb - self.mean_  # (B, h, w, C)
        return torch.einsum("bhwi,ij,bhwj->bhw", d, self.precision_, d).clamp_min(1e-12).sqrt()

    def _is_fitted(self) -> bool:
        return self.mean_ is not None

    def _state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean_, "precision": self.precision_}

    def _load_state(self, tensors, meta, directory: Path) -> None:
        self.mean_, self.precision_ = tensors["mean"], tensors["precision"]


class ODIN(_Perturbed):
    """ODIN-style: temperature-scaled softmax over cosine similarities to k-means prototypes of normal patches.

    A patch close to one prototype gets a confident softmax (low score); a patch between or far from all
    prototypes gets a flat one (high score ``-log max softmax``). The perturbation raises the confidence.

    Args:
        backbone: backbone name or instance.
        prototypes: number of k-means centres.
        temperature: softmax temperature on cosine similarities.
        epsilon: perturbation step in the backbone's normalised input units (0 = no perturbation).
        map: ``"perturbed"`` or ``"change"``.
        max_patches: normal patches used by k-means (seeded subsample).
        seed: k-means and subsample seed.
        **hyper: embedder settings (``layers``, ``image_size``, ``pool``) and ``sigma``.
    """

    name = "odin"

    def __init__(self, backbone="efficientnet-lite0", *, prototypes: int = 8, temperature: float = 0.02,
                 epsilon: float = 0.002, map: str = "perturbed", max_patches: int = 50_000, seed: int = 0,
                 **hyper: Any) -> None:
        if prototypes < 1 or temperature <= 0:
            raise ConfigError(f"odin needs prototypes >= 1 and temperature > 0, got {prototypes}, {temperature}")
        super().__init__(backbone, epsilon=epsilon, map=map, prototypes=prototypes, temperature=temperature,
                         max_patches=max_patches, seed=seed, **hyper)
        self.centres_: torch.Tensor | None = None

    def _fit_embeddings(self, emb: torch.Tensor, ids: list[str]) -> None:
        self.centres_ = spherical_kmeans(self._patches(emb), self.hyper["prototypes"], seed=self.hyper["seed"])

    def _patch_scores(self, emb: torch.Tensor) -> torch.Tensor:
        logits = F.normalize(emb, dim=-1) @ self.centres_.T / self.hyper["temperature"]  # (B, h, w, K)
        return -F.log_softmax(logits, dim=-1).amax(-1)

    def _is_fitted(self) -> bool:
        return self.centres_ is not None

    def _state(self) -> dict[str, torch.Tensor]:
        return {"centres": self.centres_}

    def _load_state(self, tensors, meta, directory: Path) -> None:
        self.centres_ = tensors["centres"]


def spherical_kmeans(x: torch.Tensor, k: int, *, seed: int = 0, iters: int = 20) -> torch.Tensor:
    """Unit-norm k-means centres (k, C) of the rows of ``x`` (k-means++-free: seeded random init)."""
    x = F.normalize(x.float(), dim=-1)
    k = min(k, len(x))
    gen = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = (x @ centres.T).argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        empty = torch.bincount(assign, minlength=k) == 0
        centres = torch.where(empty[:, None], centres, F.normalize(sums, dim=-1))
    return centres


__all__ = ["Mahalanobis", "ODIN", "spherical_kmeans"]
