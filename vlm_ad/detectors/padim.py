"""PaDiM (Defard et al. 2021): a Gaussian per patch position; the score is the Mahalanobis distance to it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from vlm_ad.detectors.base import Detector, as_images
from vlm_ad.errors import ConfigError, DataError


class PaDiM(Detector):
    """PaDiM on a random subset of ``n_features`` channels of the (unnormalised) patch embeddings.

    Args:
        backbone: backbone name or instance.
        n_features: channels kept (random subset, as in the paper; all when the embedding has fewer).
        eps: ridge added to each covariance (``eps * I``), which also makes few-shot fits well posed.
        seed: seed of the channel subset.
        **hyper: embedder settings (``layers``, ``image_size``, ``geometry``, ``tile``, ``pool`` default 1) and
            ``sigma``.

    Default geometry ``"square"``. Per-position statistics need one patch grid, so under an aspect-preserving geometry
    ``fit`` fixes the input shape to the most common input shape of the training images; every later image is resized
    to it (its map is resized back to its own size), and the saved model records it (``input_shape`` of its embedder).
    """

    name = "padim"
    raw_features = True

    def __init__(self, backbone="efficientnet-lite0", *, n_features: int = 100, eps: float = 0.01, seed: int = 0,
                 **hyper: Any) -> None:
        if n_features < 1 or eps <= 0:
            raise ConfigError(f"padim needs n_features >= 1 and eps > 0, got {n_features} and {eps}")
        hyper.setdefault("pool", 1)
        # square by default: "area" lost to it on every differing PaDiM cell of eval/results/generalization.md
        hyper.setdefault("geometry", "square")
        super().__init__(backbone, n_features=n_features, eps=eps, seed=seed, **hyper)
        self.mean_: torch.Tensor | None = None

    def fit(self, normal_images, *, progress=None) -> PaDiM:
        arrays, _ = as_images(normal_images)
        self._ensure_embedder()
        self.embedder.set_input_shape(None)
        if arrays and self.embedder.geometry.mode != "square":
            shapes = Counter(self.embedder.input_shape(a) for a in arrays)
            self.embedder.set_input_shape(shapes.most_common(1)[0][0])
        return super().fit(normal_images, progress=progress)

    def _fit_embeddings(self, emb: torch.Tensor, ids: list[str]) -> None:
        if len(ids) == 0:
            raise DataError("padim needs at least one normal image to fit (use 'mutual' for zero-shot)")
        n, h, w, c = emb.shape
        gen = torch.Generator().manual_seed(self.hyper["seed"])
        d = min(self.hyper["n_features"], c)
        self.channels_ = torch.randperm(c, generator=gen)[:d].sort().values
        x = emb[..., self.channels_].reshape(n, h * w, d).double()  # (N, P, d)
        self.mean_ = x.mean(0)  # (P, d)
        xc = x - self.mean_
        cov = torch.einsum("npi,npj->pij", xc, xc) / max(n - 1, 1)  # (P, d, d)
        cov += self.hyper["eps"] * torch.eye(d, dtype=cov.dtype)
        self.inv_cov_ = torch.linalg.inv(cov).float()  # (P, d, d)
        self.mean_ = self.mean_.float()
        self.grid_ = (h, w)

    def _score_embeddings(self, emb: torch.Tensor):
        b, h, w, _ = emb.shape
        if (h, w) != tuple(self.grid_):
            raise DataError(f"padim was fitted on a {self.grid_} patch grid but got {(h, w)}: keep image_size and "
                            "geometry fixed")
        x = emb[..., self.channels_].reshape(b, h * w, -1) - self.mean_  # (B, P, d)
        m = torch.einsum("bpi,pij,bpj->bp", x, self.inv_cov_, x).clamp_min(0).sqrt()  # (B, P)
        return m.reshape(b, h, w), [[] for _ in range(b)]

    def _is_fitted(self) -> bool:
        return self.mean_ is not None

    def _state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean_, "inv_cov": self.inv_cov_, "channels": self.channels_,
                "grid": torch.tensor(self.grid_)}

    def _load_state(self, tensors, meta, directory: Path) -> None:
        self.mean_, self.inv_cov_, self.channels_ = tensors["mean"], tensors["inv_cov"], tensors["channels"]
        self.grid_ = tuple(int(v) for v in tensors["grid"])
