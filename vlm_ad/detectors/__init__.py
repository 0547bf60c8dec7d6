"""Detector registry: ``create_detector(name, backbone=..., **kw)``, ``list_detectors()``, ``load_detector(dir)``.

Registered names:
    patchcore   nearest normal patch in a coreset memory bank (full-shot and k-shot)
    padim       per-position Gaussian, Mahalanobis distance
    mutual      zero-shot mutual scoring between unlabelled images (no normal image needed)
    adapted     per-category LoRA adapter head (synthetic defects) fused with PatchCore retrieval distances
    ae          convolutional autoencoder on pixels, map = reconstruction error           (generative)
    vae         convolutional VAE on pixels, map = reconstruction error                    (generative)
    feature-ae  autoencoder over frozen backbone features, map = feature error             (generative)
    cavga       VAE with attention-expansion training, map = 1 - attention                 (attention)
    mahalanobis Gaussian of normal patches + gradient-sign input perturbation              (input perturbation)
    odin        temperature softmax over normal prototypes + input perturbation            (input perturbation)
    winclip     zero-shot CLIP prompt-ensemble maps (needs CLIP weights: hf-clip:<dir> / openclip:<arch>)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlm_ad.detectors.base import Detector, PatchEmbedder
from vlm_ad.errors import ConfigError, DataError
from vlm_ad.registry import Registry

__all__ = ["DETECTORS", "Detector", "PatchEmbedder", "create_detector", "list_detectors", "load_detector"]

DETECTORS: Registry[Detector] = Registry("detector")


@DETECTORS.register("patchcore", description="nearest normal patch in a coreset memory bank (k-shot, full-shot)")
def _patchcore(**kw: Any) -> Detector:
    from vlm_ad.detectors.patchcore import PatchCore

    return PatchCore(**kw)


@DETECTORS.register("padim", description="per-position Gaussian of normal patches, Mahalanobis distance")
def _padim(**kw: Any) -> Detector:
    from vlm_ad.detectors.padim import PaDiM

    return PaDiM(**kw)


@DETECTORS.register("mutual", description="zero-shot: mutual patch scoring between unlabelled test images")
def _mutual(**kw: Any) -> Detector:
    from vlm_ad.detectors.mutual import Mutual

    return Mutual(**kw)


@DETECTORS.register("ae", description="generative: conv autoencoder on pixels, map = reconstruction error")
def _ae(**kw: Any) -> Detector:
    from vlm_ad.detectors.generative import AutoEncoder

    return AutoEncoder(**kw)


@DETECTORS.register("vae", description="generative: conv VAE on pixels, map = reconstruction error")
def _vae(**kw: Any) -> Detector:
    from vlm_ad.detectors.generative import VAE

    return VAE(**kw)


@DETECTORS.register("feature-ae", description="generative: autoencoder over backbone features, map = feature error")
def _feature_ae(**kw: Any) -> Detector:
    from vlm_ad.detectors.generative import FeatureReconstruction

    return FeatureReconstruction(**kw)


@DETECTORS.register("cavga", description="attention: VAE with attention-expansion training, map = 1 - attention")
def _cavga(**kw: Any) -> Detector:
    from vlm_ad.detectors.generative import CAVGA

    return CAVGA(**kw)


@DETECTORS.register("mahalanobis", description="input perturbation: Gaussian of normal patches (Lee et al. 2018)")
def _mahalanobis(**kw: Any) -> Detector:
    from vlm_ad.detectors.perturbation import Mahalanobis

    return Mahalanobis(**kw)


@DETECTORS.register("odin", description="input perturbation: temperature softmax over normal patch prototypes")
def _odin(**kw: Any) -> Detector:
    from vlm_ad.detectors.perturbation import ODIN

    return ODIN(**kw)


@DETECTORS.register("adapted", description="per-category LoRA adapter head fused with retrieval distances")
def _adapted(**kw: Any) -> Detector:
    from vlm_ad.detectors.adapted import Adapted

    return Adapted(**kw)


@DETECTORS.register("winclip", description="zero-shot: CLIP prompt-ensemble maps (needs CLIP weights)")
def _winclip(**kw: Any) -> Detector:
    from vlm_ad.detectors.winclip import WinClip

    return WinClip(**kw)


def create_detector(name: str, **kwargs: Any) -> Detector:
    """Build an unfitted detector, e.g. ``create_detector("patchcore", backbone="efficientnet-lite0")``."""
    return DETECTORS.create(name, **kwargs)


def list_detectors(pattern: str | None = None) -> list[str]:
    """Registered detector names."""
    return DETECTORS.names(pattern)


def load_detector(directory: str | Path) -> Detector:
    """Load a detector saved with ``Detector.save`` (``vlm-ad fit --out DIR``)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path, tensor_path = directory / "detector.json", directory / "detector.safetensors"
    if not meta_path.is_file() or not tensor_path.is_file():
        raise DataError(f"{directory} is not a saved model: expected detector.json and detector.safetensors "
                        "(create one with 'vlm-ad fit DATA --out DIR')")
    try:
        meta = json.loads(meta_path.read_text())
        emb = meta["embedder"]
        geometry = {"geometry": emb.get("geometry", "square"), "tile": emb.get("tile"),  # older models: square
                    "input_shape": emb.get("input_shape")}
        geometry = geometry if emb["backbone"] != "pixels" else {}
        det = create_detector(meta["detector"], backbone=emb["backbone"], layers=emb["layers"],
                              image_size=emb["image_size"], pool=emb["pool"], **geometry,
                              **{k: v for k, v in meta["hyper"].items()
                                 if k not in ("layers", "image_size", "pool", "geometry", "tile", "input_shape")})
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{meta_path} is malformed ({exc!r}); re-create the model with 'vlm-ad fit'") from exc
    if det.embedder is not None and "normalize" in emb:  # the saved embedder is the truth
        det.embedder.normalize = bool(emb["normalize"])
    det._load_state(load_file(str(tensor_path)), meta, directory)
    det.threshold_ = meta.get("threshold")
    return det
