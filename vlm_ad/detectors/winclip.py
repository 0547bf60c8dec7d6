"""``winclip``: zero-shot anomaly maps from CLIP prompt ensembles (WinCLIP-style), as a registered detector.

For users who have CLIP weights (``hf-clip:<dir>``, or ``openclip:<arch>`` passed as a backbone instance built with
its ``pretrained`` file). The map is the sigmoid of ``scale * (cos(patch, anomalous) - cos(patch, normal))`` over the
prompt ensembles of ``prompts/winclip.json`` (:class:`vlm_ad.clip_prompts.PromptMapper`); the image score is the mean
of the top 1 % of patch probabilities. No normal image is needed; when ``fit`` gets some, they only set the decision
threshold (a high quantile of their scores). A trained prompt adapter (``save_prompt_adapter``) can be loaded with
``adapter=DIR``. On this project's machines it is only tested on tiny random CLIPs (no CLIP weights install offline),
so its detection quality here is unmeasured.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlm_ad.detectors.base import EMBEDDER_KEYS, Detector, PatchEmbedder, as_images
from vlm_ad.detectors.threshold import ThresholdPolicy
from vlm_ad.errors import ConfigError, DataError
from vlm_ad.types import AnomalyMap


class WinClip(Detector):
    """Zero-shot CLIP prompt maps.

    Args:
        backbone: ``"hf-clip:<dir>"``, ``"openclip:<arch>"`` or a CLIP backbone instance.
        obj: the object name put into the prompts (e.g. ``"tile"``).
        prompts: a prompt-set JSON file (default ``prompts/winclip.json``).
        adapter: a folder written by :func:`vlm_ad.clip_prompts.save_prompt_adapter` (learned prompt offsets).
        quantile: with normal images in ``fit``, the quantile of their scores used as the threshold.
    """

    name = "winclip"

    def __init__(self, backbone: Any = None, *, obj: str = "object", prompts: str | None = None,
                 adapter: str | None = None, quantile: float = 0.99, **hyper: Any) -> None:
        if backbone is None or (isinstance(backbone, str) and not backbone.startswith(("hf-clip:", "openclip:"))):
            raise ConfigError(f"winclip needs a CLIP backbone ('hf-clip:<dir>' or 'openclip:<arch>'), got {backbone!r}")
        hyper.pop("seed", None)  # nothing random here
        super().__init__(backbone, obj=obj, prompts=prompts, adapter=adapter, quantile=quantile, **hyper)
        self.mapper_ = None

    def _make_embedder(self):
        from vlm_ad.backbones import create_backbone

        h, backbone = self.hyper, self.backbone
        if isinstance(backbone, str) and "image_size" not in h:  # the CLIP's own input size
            backbone = create_backbone(backbone, **({"layers": h["layers"]} if "layers" in h else {}))
        return PatchEmbedder(backbone, **{k: h[k] for k in EMBEDDER_KEYS if k in h})

    def _mapper(self):
        if self.mapper_ is None:
            from vlm_ad.clip_prompts import PromptMapper, load_prompt_adapter, load_prompt_set

            h = self.hyper
            self.mapper_ = PromptMapper(self.embedder.net, load_prompt_set(h["prompts"]), obj=h["obj"]).eval()
            if h["adapter"]:
                load_prompt_adapter(h["adapter"], self.mapper_)
        return self.mapper_

    def fit(self, normal_images, *, progress=None) -> WinClip:
        """Zero-shot: builds the text prototypes; normal images (optional) only set the threshold."""
        self._ensure_embedder()
        self._mapper()
        if len(normal_images):
            scores = [m.score for m in self.predict(normal_images)]
            self.threshold_ = ThresholdPolicy(quantile=self.hyper["quantile"]).fit(np.array(scores)).threshold_
        return self

    def predict(self, images, *, progress=None) -> list[AnomalyMap]:
        arrays, ids = as_images(images)
        if not arrays:
            raise DataError("predict() got no images")
        mapper, grids, scores = self._mapper(), [], []
        t0 = time.perf_counter()
        for start in range(0, len(arrays), 8):
            probs, s = mapper.anomaly_maps(arrays[start : start + 8])
            grids.append(torch.from_numpy(probs))
            scores += s.tolist()
            if progress:
                progress(len(arrays[start : start + 8]))
        self.timings_["score"] += time.perf_counter() - t0
        maps = self._to_maps(torch.cat(grids), [a.shape[:2] for a in arrays], ids, [[] for _ in arrays])
        for m, s in zip(maps, scores):
            m.score = float(s)  # the top-1 % mean of patch probabilities, as WinCLIP
        return maps

    def _is_fitted(self) -> bool:
        return True  # zero-shot

    def _state(self) -> dict[str, torch.Tensor]:
        return {"offset": self._mapper().offset.detach().contiguous()}

    def _load_state(self, tensors, meta, directory: Path) -> None:
        with torch.no_grad():
            self._mapper().offset.copy_(tensors["offset"])
