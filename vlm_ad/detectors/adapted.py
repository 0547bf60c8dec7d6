"""``adapted``: a per-category LoRA adapter's patch head fused with PatchCore retrieval distances.

``fit(normal_images)`` loads the adapter given as ``adapter=DIR`` (made by ``vlm-ad adapt``), or trains one on the
fit images themselves (:func:`vlm_ad.adapt.train_adapter`, settings from ``adapt={...}``), then builds a PatchCore
memory bank from the *frozen* backbone's patch features (``retrieval="frozen"``, the default: LoRA switched off, so
the retrieval half is exactly the PatchCore being adapted and ``fuse=1`` is that PatchCore; on the dev suite the
adapted features lost AUPRO to it) or from the adapted ones (``retrieval="adapted"``, the behaviour before; two
backbone passes per image become one). A patch's score is the weighted sum of the two
standardised maps, ``fuse * z(retrieval distance) + (1 - fuse) * z(head logit)``, each standardised by its mean and
spread over the normal training patches (retrieval distances leave each image's own patches out). The image score is
the map maximum (``score="max"``, PatchCore's), the mean of its top ``topk`` share of pixels (``score="topk"``), or
chosen at fit time (``score="auto"``, the default; see below).

``fuse="auto"`` (the default) chooses the weight at fit time, never on test labels: the fit images (scored
leave-image-out) are the normal validation set, and copies of them with synthetic anomalies are the anomalous one -
half painted by :func:`vlm_ad.data.make_defect` with a seed the adapter never trained on, half a cut-paste of a
rotated patch of *another* normal image (a generator the head never saw, so a head that only learned the painter's
defects gets no credit for it). Each weight in :data:`FUSE_GRID` is scored by the mean of its image AUROC (normal vs
synthetic) and patch AUROC; a weight that gives the head a say is kept only when it beats retrieval alone (``fuse``
1) by more than :data:`FUSE_MARGIN`, loses to it on neither AUROC, and beats it in at least :data:`FUSE_CONFIDENCE`
of a paired bootstrap over the validation images (:mod:`vlm_ad.detectors.fuse_choice`, :func:`pick_fuse`: on 8 shots
a gain of a few hundredths is often one image), else the detector falls back to retrieval alone. The choice, its
reason and confidence, and the validation figures are saved with the model (``fusion_``) and said by
:meth:`Adapted.summary`.

``score="auto"`` (the default) then chooses the image score at the chosen weight on the same validation images: the
map maximum (the base: the PatchCore being adapted scores images so, and with ``fuse`` 1 the map *is* that
PatchCore's, so the adapted detector then scores exactly as it does) or the top-k mean, kept only when its validation
image AUROC beats the maximum's in at least :data:`~vlm_ad.detectors.fuse_choice.SCORE_CONFIDENCE` of the same
paired bootstrap (:func:`~vlm_ad.detectors.fuse_choice.score_table`, :func:`~vlm_ad.detectors.fuse_choice.pick_score`).
The choice, its reason and the figures are saved in ``fusion_["image_score"]``; a model saved before the option
existed keeps its given score.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlm_ad.detectors.base import Detector, PatchEmbedder
from vlm_ad.detectors.fuse_choice import (
    FUSE_CONFIDENCE,
    FUSE_MARGIN,
    FUSE_RESAMPLES,
    SCORE_BASE,
    SCORE_CONFIDENCE,
    SCORE_TIE,
    fuse_table,
    pick_fuse,
    pick_score,
    score_table,
)
from vlm_ad.detectors.patchcore import PatchCore
from vlm_ad.detectors.threshold import ThresholdPolicy
from vlm_ad.errors import ConfigError, DataError

_SCORES = ("auto", "max", "topk")
FUSE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)  # candidate retrieval weights for fuse="auto"
N_VALIDATION = 16  # at most this many fit images get a synthetic-anomaly copy for the choice


class Adapted(Detector):
    """Adapter head + retrieval fusion.

    Args:
        backbone: must be ``dinov2-s14``; None (default) takes the backbone recorded in ``adapter``, else
            ``dinov2-s14``.
        adapter: an adapter folder; None trains one on the fit images.
        adapt: :class:`~vlm_ad.adapt.AdaptConfig` overrides used when training in ``fit``.
        fuse: weight of the retrieval map in the fusion (1 = retrieval only, 0 = head only), or
            ``"auto"`` (default): chosen at fit time on the fit images plus synthetic anomalies made on them,
            falling back to 1 when the head does not help (see the module docstring).
        score: image score, ``"max"`` (the map maximum, PatchCore's), ``"topk"`` (mean of the top ``topk`` share of
            map pixels) or ``"auto"`` (default): chosen at fit time between the two on the same validation images as
            the fusion weight, ``max`` unless ``topk`` beats it surely (see the module docstring).
        topk: share of the top map pixels averaged by the ``topk`` score.
        retrieval: ``"frozen"`` (default: the bank holds the frozen backbone's features) or ``"adapted"``.
        seed: coreset / training seed.
        **hyper: embedder settings (``geometry``, ``image_size``, ``min_side``, ``max_downscale``, ``pool``;
            default: PatchCore's input for dinov2-s14, ``area`` 364 with ``min_side`` 224 and ``max_downscale`` 3)
            and ``sigma``. The adapter trains at ``adapt={"image_size": ...}`` (224 by default), or at
            ``image_size`` when ``geometry="square"`` is given.
    """

    name = "adapted"

    def __init__(self, backbone: str | None = None, *, adapter: str | None = None, adapt: dict | None = None,
                 fuse: float | str = "auto", score: str = "auto", topk: float = 0.01, retrieval: str = "frozen",
                 seed: int = 0, **hyper: Any) -> None:
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
        bad_fuse = fuse != "auto" and not (isinstance(fuse, (int, float)) and 0 <= fuse <= 1)
        if bad_fuse or score not in _SCORES or not 0 < topk <= 1 or retrieval not in ("frozen", "adapted"):
            raise ConfigError(f"adapted needs fuse 'auto' or a weight in [0, 1], score in {_SCORES}, 0 < topk <= 1, "
                              "retrieval 'frozen' or 'adapted'; "
                              f"got fuse={fuse!r}, score={score!r}, topk={topk}, retrieval={retrieval!r}")
        hyper.setdefault("layers", ("block5", "block7"))
        self.backbone, self.hyper = backbone, dict(adapter=adapter, adapt=dict(adapt or {}), fuse=fuse, score=score,
                                                   topk=topk, retrieval=retrieval, seed=seed, **hyper)
        self.threshold_ = None
        self.timings_ = {"embed": 0.0, "score": 0.0}
        self.embedder_: PatchEmbedder | None = None  # built with the adapted backbone in fit / load
        self.head_ = None
        self.adapt_config_ = None
        self.store_ = None
        self.stats_: torch.Tensor | None = None  # (4,) retrieval mean, sd, head mean, sd over normal patches
        self.fusion_: dict[str, Any] | None = None  # the retrieval weight in use and how it was chosen
        self._preset = False  # use_trained() gave the adapter: fit does not load or train one

    # adapter --------------------------------------------------------------------------------------------------
    def _adapt_config(self):
        from vlm_ad.adapt import AdaptConfig

        kw = {"layers": tuple(self.hyper["layers"]), "seed": self.hyper["seed"]}
        if "image_size" in self.hyper and self.hyper.get("geometry") == "square":  # square in: the adapter's size too
            kw["image_size"] = self.hyper["image_size"]
        return AdaptConfig(**(kw | self.hyper["adapt"]))

    def _use(self, net, head, cfg) -> None:
        self.embedder_ = PatchEmbedder(net, **self._input_settings())
        self.head_, self.adapt_config_ = head, cfg

    def _input_settings(self) -> dict[str, Any]:
        """The embedder's input: the geometry settings given (a saved model records them), else PatchCore's
        dinov2-s14 default input, so that the retrieval half is the PatchCore ``vlm-ad fit`` makes on this backbone.
        The adapter trains at its own square size (``adapt={"image_size": ...}``, 224 by default); its head scores
        each patch alone, so it runs at any input shape, and ``fuse="auto"`` keeps it only where it helps there."""
        keys = ("geometry", "image_size", "min_side", "max_downscale", "input_shape", "pool", "pool_pad")
        given = {k: self.hyper[k] for k in keys if k in self.hyper}
        if "geometry" in given:
            return given
        return PatchCore.default_input[self.backbone] | given

    def _prepare_adapter(self, arrays: list[np.ndarray]) -> None:
        from vlm_ad.adapt import load_adapter, train_adapter

        if self.hyper["adapter"]:
            self._use(*load_adapter(self.hyper["adapter"]))
        else:
            res = train_adapter(arrays, self._adapt_config())
            self._use(res.net, res.head, res.config)

    def use_trained(self, net, head, cfg) -> Adapted:
        """Use an adapter trained in this process (:class:`~vlm_ad.adapt.TrainResult` parts) instead of the
        ``adapter`` folder or training one in :meth:`fit`; returns self."""
        self._use(net, head, cfg)
        self._preset = True
        return self

    def fit(self, normal_images, *, progress=None) -> Adapted:
        from vlm_ad.detectors.base import as_images

        arrays, _ = as_images(normal_images)
        if len(arrays) < 2:
            raise DataError(f"adapted needs at least 2 normal images to fit, got {len(arrays)}")
        if not self._preset:
            self._prepare_adapter(arrays)
        self._fit_arrays = arrays  # the synthetic-anomaly copies for fuse="auto" are made from these
        try:
            return super().fit(normal_images, progress=progress)
        finally:
            self._fit_arrays = None

    def _make_embedder(self):
        return None  # the adapted backbone comes from the adapter (see _use)

    def fit_layers(self, layers, ids):
        raise ConfigError("adapted computes its own (adapted) features; call fit(images), not fit_layers")

    def predict_layers(self, layers, sizes, ids):
        raise ConfigError("adapted computes its own (adapted) features; call predict(images), not predict_layers")

    # embedding: retrieval features + the head's logit as one extra channel -------------------------------------
    ragged = True  # images of several input shapes: one (h_i, w_i, C + 1) grid each, as PatchCore's
    share_blocks = True  # the LoRA-on and LoRA-off passes share the blocks below the first LoRA block (same features;
    # False runs two whole passes, as before 2026-12-05: eval/bench_adapted_speed.py times both)

    def _embed_shape(self, arrays, progress) -> torch.Tensor:
        """(B, h, w, C + 1) of images of one input shape (:meth:`Detector._embed` groups the shapes)."""
        from vlm_ad.adapt import head_features, lora_disabled

        size = self.embedder.input_shape(arrays[0])
        out, net = [], self.embedder.net
        frozen = self.hyper["retrieval"] == "frozen"
        split = min(self.adapt_config_.lora_blocks) if frozen and self.adapt_config_ is not None else None
        for start in range(0, len(arrays), 8):
            chunk = arrays[start : start + 8]
            if split is not None and self.share_blocks and hasattr(net, "extract_branches"):
                # LoRA on (the head's features) and off (retrieval's), the blocks below the first LoRA block once
                head_layers, retrieval_layers = (f.layers for f in net.extract_branches(
                    chunk, size=size, split=split, branches=(contextlib.nullcontext, lambda: lora_disabled(net))))
            else:
                head_layers = retrieval_layers = net.extract(chunk, batch_size=8, size=size).layers
                if frozen:
                    with lora_disabled(net):
                        retrieval_layers = net.extract(chunk, batch_size=8, size=size).layers
            with torch.no_grad():
                logit = self.head_(head_features(head_layers))  # (B, h, w)
            out.append(torch.cat([self.embedder.aggregate(retrieval_layers), logit[..., None]], dim=-1))  # (B,h,w,C+1)
            if progress:
                progress(len(chunk))
        return torch.cat(out)

    def _fit_embeddings(self, emb: torch.Tensor | list[torch.Tensor], ids: list[str]) -> None:
        grids = list(emb)  # per image (h_i, w_i, C + 1): the fit images may have several input shapes
        pc = PatchCore(self.embedder.net, coreset=1.0, seed=self.hyper["seed"])
        pc._fit_embeddings([g[..., :-1] for g in grids], ids)
        self.store_ = pc.store_
        loo = _loo_scores(pc, grids, ids)  # (h_i, w_i) each, NaN where only own patches were near
        seen = torch.cat([g[~torch.isnan(g)] for g in loo])
        head = [g[..., -1] for g in grids]
        flat = torch.cat([h.reshape(-1) for h in head])
        self.stats_ = torch.stack([seen.mean(), seen.std().clamp(min=1e-6), flat.mean(), flat.std().clamp(min=1e-6)])
        loo = [torch.nan_to_num(g, nan=float(seen.mean())) for g in loo]
        self.fusion_ = None
        if "auto" in (self.hyper["fuse"], self.hyper["score"]):
            arrays = getattr(self, "_fit_arrays", None)
            if arrays is None:
                raise ConfigError("adapted with fuse='auto' or score='auto' needs the fit images: call fit(images)")
            val = self._validation(arrays, ids, loo, head, pc)
        if self.hyper["fuse"] == "auto":
            fusion = self._choose_fuse(val)
        else:
            fusion = {"fuse": float(self.hyper["fuse"]), "chosen": "given"}
        if self.hyper["score"] == "auto":
            fusion["image_score"] = self._choose_score(val, fusion["fuse"])
        self.fusion_ = fusion
        self._loo = [self._fuse(r, h) for r, h in zip(loo, head)]

    @property
    def fuse_(self) -> float:
        """The retrieval weight in use (chosen at fit time with ``fuse="auto"``)."""
        return float(self.fusion_["fuse"]) if self.fusion_ else float(self.hyper["fuse"])

    def _fuse(self, retr: torch.Tensor, head: torch.Tensor, w: float | None = None) -> torch.Tensor:
        s, w = self.stats_, self.fuse_ if w is None else w
        return w * (retr - s[0]) / s[1] + (1 - w) * (head - s[2]) / s[3]

    @property
    def score_(self) -> str:
        """The image score in use: ``"max"`` or ``"topk"`` (chosen at fit time with ``score="auto"``)."""
        chosen = (self.fusion_ or {}).get("image_score")
        if chosen:
            return chosen["score"]
        # before the choice (or a model saved without one): the given score; "auto" before it is made scores as
        # the top-k mean, which is what the fusion weight has always been chosen with
        return "topk" if self.hyper["score"] == "auto" else self.hyper["score"]

    # fusion and image-score choice ----------------------------------------------------------------------------
    def _validation(self, arrays, ids, loo: list[torch.Tensor], head: list[torch.Tensor], pc: PatchCore
                    ) -> dict[str, Any]:
        """The validation set of both choices: the fit images (leave-image-out) and synthetic-anomaly copies of
        them, as fused per-image grids per weight of :data:`FUSE_GRID`, with image and patch labels."""
        syn, masks, src = synthetic_validation(arrays, seed=self.hyper["seed"])
        emb = list(self._embed(syn, None))
        s_loo = _loo_scores(pc, emb, [ids[i] for i in src])  # own clean patches left out
        s_loo = [torch.nan_to_num(g, nan=float(self.stats_[0])) for g in s_loo]
        s_head = [g[..., -1] for g in emb]
        labels = [patch_labels(m, tuple(g.shape[:2])) for m, g in zip(masks, emb)]
        weights = set(FUSE_GRID) | ({float(self.hyper["fuse"])} if self.hyper["fuse"] != "auto" else set())
        return {"grids": {w: [self._fuse(r, h, w) for r, h in zip(loo + s_loo, head + s_head)] for w in weights},
                "image_labels": np.r_[np.zeros(len(loo), bool), np.ones(len(syn), bool)],
                "patch_labels": [np.zeros(g.numel(), bool) for g in loo] + [m.reshape(-1).numpy() for m in labels],
                "n_normal": len(loo), "n_synthetic": len(syn)}

    def _choose_fuse(self, val: dict[str, Any]) -> dict[str, Any]:
        """Score every weight of :data:`FUSE_GRID` on the validation images (:meth:`_validation`), per image; keep
        the head only when it beats retrieval alone surely (:func:`pick_fuse`). Image scores: :attr:`score_` (the
        top-k mean when the score is chosen too: the weight is chosen first, then the score at that weight)."""
        grids = {w: g for w, g in val["grids"].items() if w in FUSE_GRID}
        table = fuse_table({w: [self.image_score(g) for g in g_w] for w, g_w in grids.items()},  # per image, kept
                           {w: [g.reshape(-1).numpy() for g in g_w] for w, g_w in grids.items()},  # for the bootstrap
                           val["image_labels"], val["patch_labels"], seed=self.hyper["seed"])
        fuse, why, gain, conf = pick_fuse(table)
        return {"fuse": fuse, "chosen": "auto", "reason": why, "gain_over_retrieval": gain, "confidence": conf,
                "rule": {"margin": FUSE_MARGIN, "confidence": FUSE_CONFIDENCE, "resamples": FUSE_RESAMPLES,
                         "bootstrap": "paired, over validation images, normal and synthetic resampled apart"},
                "validation": table, "n_normal": val["n_normal"], "n_synthetic": val["n_synthetic"],
                "note": "fit images leave-image-out vs synthetic copies (painted + cut-paste); no test labels"}

    def _choose_score(self, val: dict[str, Any], fuse: float) -> dict[str, Any]:
        """The image score at weight ``fuse``: the map maximum (the base, PatchCore's score) or the top-k mean,
        by validation image AUROC and the paired bootstrap (:func:`score_table`, :func:`pick_score`)."""
        grids = val["grids"][float(fuse)]
        table = score_table({s: [self._work_score(self.smooth(g), s) for g in grids] for s in ("max", "topk")},
                            val["image_labels"], base=SCORE_BASE, seed=self.hyper["seed"])
        score, why = pick_score(table)
        return {"score": score, "chosen": "auto", "reason": why, "fuse": float(fuse), "validation": table,
                "rule": {"base": SCORE_BASE, "confidence": SCORE_CONFIDENCE, "tie": SCORE_TIE,
                         "resamples": FUSE_RESAMPLES},
                "n_normal": val["n_normal"], "n_synthetic": val["n_synthetic"]}

    def summary(self) -> str:
        """One line saying how the map is made (which fusion weight, and why)."""
        if self.fusion_ is None:
            return f"adapted (not fitted; fuse={self.hyper['fuse']!r})"
        f = self.fusion_
        w = self.fuse_
        part = (f"retrieval alone ({self.hyper['retrieval']} features)" if w == 1 else "head alone" if w == 0
                else f"{w:g} x retrieval + {1 - w:g} x head")
        s = f.get("image_score")
        score = "map maximum" if self.score_ == "max" else f"mean of the top {self.hyper['topk']:.0%} of the map"
        score = (f"image score: {score} ({'chosen at fit: ' + s['reason'] if s else 'given'})")
        emb = self.embedder_
        name = "adapted" if emb is None else (f"adapted on {emb.backbone_name} ({', '.join(emb.layers)}), input "
                                              f"{emb.geometry.describe()}")
        if f.get("chosen") != "auto":
            return f"{name}: {part} (fuse={w:g} given); {score}"
        v = f["validation"]
        return (f"{name}: {part}, chosen at fit on {f['n_normal']} normal + {f['n_synthetic']} synthetic-anomaly "
                f"images: {f['reason']}; best mean AUROC {max(r['mean'] for r in v.values()):.3f} vs retrieval alone "
                f"{v['1.0']['mean']:.3f}; {score}")

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
    def _work_score(self, work: torch.Tensor, score: str | None = None) -> float:
        if (score or self.score_) == "max":
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
        return {"store": "store.json", "adapter": "adapter", "fusion": self.fusion_}

    def _load_state(self, tensors, meta, directory: Path) -> None:
        from vlm_ad.adapt import load_adapter
        from vlm_ad.retrieval import ExemplarStore

        self._use(*load_adapter(directory / meta["extra"]["adapter"]))
        self.store_ = ExemplarStore.load(directory)
        self.stats_ = tensors["stats"]
        if "retrieval" not in meta["hyper"]:  # saved before the option existed: its bank holds adapted features
            self.hyper["retrieval"] = "adapted"
        fusion = meta["extra"].get("fusion")
        if fusion is None:  # a model saved before fuse="auto" existed: its fixed weight (0.5 was the default)
            w = self.hyper["fuse"]
            fusion = {"fuse": 0.5 if w == "auto" else float(w), "chosen": "given"}
        self.fusion_ = fusion


def patch_labels(mask: np.ndarray, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(h, w) bool: the patches of a ``grid_hw`` grid that an (H, W) defect mask covers a quarter or more."""
    cover = F.adaptive_avg_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None], grid_hw)[0, 0]
    return cover >= 0.25


def _loo_scores(pc: PatchCore, grids: list[torch.Tensor], ids: list[str]) -> list[torch.Tensor]:
    """Leave-image-out retrieval scores (h_i, w_i) of per-image (h_i, w_i, C + 1) grids (the head channel dropped)."""
    return [pc.leave_image_out_scores(g[None, ..., :-1], [i])[0] for g, i in zip(grids, ids)]


def synthetic_validation(arrays: list[np.ndarray], *, seed: int, n: int = N_VALIDATION
                         ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Anomalous copies of (up to ``n``) normal images: even ones painted by :func:`vlm_ad.data.make_defect`, odd
    ones a cut-paste of a rotated patch of another image. Returns (images, masks (H, W) bool, source indices)."""
    from vlm_ad.data import make_defect

    rng = np.random.default_rng([seed, 7919])  # not a seed the adapter trains with ([seed, epoch], [seed, 999])
    src = [int(i) for i in rng.permutation(len(arrays))[:n]]
    images, masks = [], []
    for j, i in enumerate(src):
        img = np.asarray(arrays[i])
        if j % 2 == 0:
            out, mask, _ = make_defect(img, None, rng)
        else:
            donor = np.asarray(arrays[(i + 1 + int(rng.integers(len(arrays) - 1))) % len(arrays)])
            out, mask = cut_paste(img, donor, rng)
        images.append(out)
        masks.append(mask)
    return images, masks, src


def cut_paste(image: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paste a rotated rectangle of ``donor`` (2-6% of ``image``'s area) at a random place of ``image``."""
    img = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    don = donor if donor.ndim == 3 else np.repeat(donor[..., None], 3, axis=2)
    h, w = img.shape[:2]
    area = rng.uniform(0.02, 0.06) * h * w
    aspect = rng.uniform(0.3, 3.0)
    ph = int(np.clip(np.sqrt(area * aspect), 4, min(h, don.shape[0]) - 1))
    pw = int(np.clip(area / ph, 4, min(w, don.shape[1]) - 1))
    y0, x0 = int(rng.integers(don.shape[0] - ph)), int(rng.integers(don.shape[1] - pw))
    patch = np.rot90(don[y0 : y0 + ph, x0 : x0 + pw], int(rng.integers(1, 4)))
    ph, pw = patch.shape[:2]
    if ph >= h or pw >= w:
        patch = patch[: h - 1, : w - 1]
        ph, pw = patch.shape[:2]
    y, x = int(rng.integers(h - ph)), int(rng.integers(w - pw))
    out = img.copy()
    out[y : y + ph, x : x + pw] = patch
    mask = np.zeros((h, w), bool)
    mask[y : y + ph, x : x + pw] = np.any(out[y : y + ph, x : x + pw] != img[y : y + ph, x : x + pw], axis=2)
    return out, mask
