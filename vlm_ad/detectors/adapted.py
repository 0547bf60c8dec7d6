"""``adapted``: a per-category LoRA adapter's patch head fused with PatchCore retrieval distances.

``fit(normal_images)`` loads the adapter given as ``adapter=DIR`` (made by ``vlm-ad adapt``), or trains one on the
fit images themselves (:func:`vlm_ad.adapt.train_adapter`, settings from ``adapt={...}``), then builds a PatchCore
memory bank from the *adapted* backbone's patch features. A patch's score is the mean of the two standardised
maps, ``fuse * z(retrieval distance) + (1 - fuse) * z(head logit)``, each standardised by its mean and spread over
the normal training patches (retrieval distances leave each image's own patches out). The image score is the map
maximum (``score="max"``) or the mean of its top ``topk`` share of pixels (``score="topk"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlm_ad.detectors.base import Detector, PatchEmbedder
from vlm_ad.detectors.patchcore import PatchCore
from vlm_ad.detectors.threshold import ThresholdPolicy
from vlm_ad.errors import ConfigError, DataError

_SCORES = ("max", "topk")


class Adapted(Detector):
    """Adapter head + retrieval fusion.

    Args:
        backbone: must be ``dinov2-s14``; None (default) takes the backbone recorded in ``adapter``, else
            ``dinov2-s14``.
        adapter: an adapter folder; None trains one on the fit images.
        adapt: :class:`~vlm_ad.adapt.AdaptConfig` overrides used when training in ``fit``.
        fuse: weight of the retrieval map in the fusion (1 = PatchCore only, 0 = head only).
        score: image score, ``"max"`` or ``"topk"``; ``topk``: share of the top map pixels averaged.
        seed: coreset / training seed.
        **hyper: embedder settings (``image_size``, ``pool``) and ``sigma``.
    """

    name = "adapted"

    def __init__(self, backbone: str | None = None, *, adapter: str | None = None, adapt: dict | None = None,
                 fuse: float = 0.5, score: str = "topk", topk: float = 0.01, seed: int = 0, **hyper: Any) -> None:
        if adapter:
            from vlm_ad.adapt import adapter_backbone

            recorded = adapter_backbone(adapter)  # the adapter folder records its backbone: no need to repeat it
            if backbone is not None and backbone != recorded:
                raise ConfigError(f"adapter {adapter} was trained on backbone {recorded!r}, not {backbone!r}; "
                                  "leave the backbone out (it is read from the adapter) or pass that one")
            backbone = recorded
        backbone = backbone or "dinov2-s14"
        if backbone != "dinov2-s14":
            raise ConfigError(f"adapted needs backbone 'dinov2-s14' (LoRA on its blocks), got {backbone!r}")
        if not 0 <= fuse <= 1 or score not in _SCORES or not 0 < topk <= 1:
            raise ConfigError(f"adapted needs 0 <= fuse <= 1, score in {_SCORES}, 0 < topk <= 1; "
                              f"got {fuse}, {score!r}, {topk}")
        hyper.setdefault("layers", ("block5", "block7"))
        self.backbone, self.hyper = backbone, dict(adapter=adapter, adapt=dict(adapt or {}), fuse=fuse, score=score,
                                                   topk=topk, seed=seed, **hyper)
        self.threshold_ = None
        self.timings_ = {"embed": 0.0, "score": 0.0}
        self.embedder_: PatchEmbedder | None = None  # built with the adapted backbone in fit / load
        self.head_ = None
        self.adapt_config_ = None
        self.store_ = None
        self.stats_: torch.Tensor | None = None  # (4,) retrieval mean, sd, head mean, sd over normal patches

    # adapter --------------------------------------------------------------------------------------------------
    def _adapt_config(self):
        from vlm_ad.adapt import AdaptConfig

        kw = {"layers": tuple(self.hyper["layers"]), "seed": self.hyper["seed"]}
        if "image_size" in self.hyper:
            kw["image_size"] = self.hyper["image_size"]
        return AdaptConfig(**(kw | self.hyper["adapt"]))

    def _use(self, net, head, cfg) -> None:
        self.embedder_ = PatchEmbedder(net, pool=self.hyper.get("pool", 3), geometry="square")  # as the adapter trained
        self.head_, self.adapt_config_ = head, cfg

    def _prepare_adapter(self, arrays: list[np.ndarray]) -> None:
        from vlm_ad.adapt import load_adapter, train_adapter

        if self.hyper["adapter"]:
            self._use(*load_adapter(self.hyper["adapter"]))
        else:
            res = train_adapter(arrays, self._adapt_config())
            self._use(res.net, res.head, res.config)

    def fit(self, normal_images, *, progress=None) -> Adapted:
        from vlm_ad.detectors.base import as_images

        arrays, _ = as_images(normal_images)
        if len(arrays) < 2:
            raise DataError(f"adapted needs at least 2 normal images to fit, got {len(arrays)}")
        self._prepare_adapter(arrays)
        return super().fit(normal_images, progress=progress)

    def _make_embedder(self):
        return None  # the adapted backbone comes from the adapter (see _use)

    def fit_layers(self, layers, ids):
        raise ConfigError("adapted computes its own (adapted) features; call fit(images), not fit_layers")

    def predict_layers(self, layers, sizes, ids):
        raise ConfigError("adapted computes its own (adapted) features; call predict(images), not predict_layers")

    # embedding: retrieval features + the head's logit as one extra channel -------------------------------------
    def _embed(self, arrays, progress) -> torch.Tensor:
        from vlm_ad.adapt import head_features

        out = []
        for start in range(0, len(arrays), 8):
            chunk = arrays[start : start + 8]
            layers = self.embedder.net.extract(chunk, batch_size=8).layers
            with torch.no_grad():
                logit = self.head_(head_features(layers))  # (B, h, w)
            out.append(torch.cat([self.embedder.aggregate(layers), logit[..., None]], dim=-1))  # (B, h, w, C + 1)
            if progress:
                progress(len(chunk))
        return torch.cat(out)

    def _fit_embeddings(self, emb: torch.Tensor, ids: list[str]) -> None:
        pc = PatchCore(self.embedder.net, coreset=1.0, seed=self.hyper["seed"])
        pc._fit_embeddings(emb[..., :-1], ids)
        self.store_ = pc.store_
        loo = pc.leave_image_out_scores(emb[..., :-1], ids)  # (B, h, w), NaN where only own patches were near
        seen = loo[~torch.isnan(loo)]
        head = emb[..., -1]
        self.stats_ = torch.stack([seen.mean(), seen.std().clamp(min=1e-6), head.mean(), head.std().clamp(min=1e-6)])
        self._loo = self._fuse(torch.nan_to_num(loo, nan=float(seen.mean())), head)

    def _fuse(self, retr: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        s, w = self.stats_, self.hyper["fuse"]
        return w * (retr - s[0]) / s[1] + (1 - w) * (head - s[2]) / s[3]

    def _calibrate(self, emb: torch.Tensor, ids: list[str]) -> float | None:
        """99th percentile of leave-image-out fused image scores of the normal training images."""
        loo, self._loo = self._loo, None
        scores = [self.image_score(g) for g in loo[:32]]
        return ThresholdPolicy(quantile=0.99).fit(np.array(scores)).threshold_

    def _score_embeddings(self, emb: torch.Tensor):
        b, gh, gw, c = emb.shape
        dist, rows = self.store_.search(emb[..., :-1].reshape(-1, c - 1), k=1)
        retr = dist[:, 0].reshape(b, gh, gw)
        grids = self._fuse(retr, emb[..., -1])
        rows = rows[:, 0].reshape(b, -1)
        hits = []
        for i in range(b):
            top = torch.topk(grids[i].reshape(-1), min(5, gh * gw)).indices
            hits.append([self.store_.hit(int(rows[i, j]), float(retr[i].reshape(-1)[j])) for j in top])
        return grids, hits

    # image score ----------------------------------------------------------------------------------------------
    def _work_score(self, work: torch.Tensor) -> float:
        if self.hyper["score"] == "max":
            return float(work.max())
        flat = work.reshape(-1)
        return float(torch.topk(flat, max(1, int(self.hyper["topk"] * flat.numel()))).values.mean())

    # persistence ----------------------------------------------------------------------------------------------
    def _is_fitted(self) -> bool:
        return self.store_ is not None and self.head_ is not None

    def _state(self) -> dict[str, torch.Tensor]:
        return {"stats": self.stats_}

    def _extra_meta(self, directory: Path) -> dict[str, Any]:
        from vlm_ad.adapt import save_adapter

        self.store_.save(directory)
        save_adapter(directory / "adapter", self.embedder.net, self.head_, self.adapt_config_)
        return {"store": "store.json", "adapter": "adapter"}

    def _load_state(self, tensors, meta, directory: Path) -> None:
        from vlm_ad.adapt import load_adapter
        from vlm_ad.retrieval import ExemplarStore

        self._use(*load_adapter(directory / meta["extra"]["adapter"]))
        self.store_ = ExemplarStore.load(directory)
        self.stats_ = tensors["stats"]
