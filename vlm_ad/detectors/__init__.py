"""Detector registry: ``create_detector(name, backbone=..., **kw)``, ``list_detectors()``, ``load_detector(dir)``.

Registered names:
    patchcore   nearest normal patch in a coreset memory bank (full-shot and k-shot)
    padim       per-position Gaussian, Mahalanobis distance
    mutual      zero-shot mutual scoring between unlabelled images (no normal image needed)
    ensemble    PatchCore on two or more backbones (default efficientnet-lite0+dinov2-s14), maps averaged
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

import difflib
import inspect
import math
from pathlib import Path
from typing import Any

from vlm_ad.artifacts import read_artifact
from vlm_ad.detectors.base import EMBEDDER_KEYS, FORMAT_VERSION, Detector, PatchEmbedder
from vlm_ad.errors import ConfigError
from vlm_ad.registry import Registry

__all__ = ["DETECTORS", "Detector", "PatchEmbedder", "check_options", "create_detector", "detector_options",
           "list_detectors", "load_detector"]

DETECTORS: Registry[Detector] = Registry("detector")


@DETECTORS.register("patchcore", description="nearest normal patch in a coreset memory bank (k-shot, full-shot)")
def _patchcore(**kw: Any) -> Detector:
    from vlm_ad.detectors.patchcore import PatchCore

    return PatchCore(**kw)


@DETECTORS.register("ensemble", description="PatchCore on several backbones ('a+b'), their scaled maps averaged")
def _ensemble(**kw: Any) -> Detector:
    from vlm_ad.detectors.ensemble import Ensemble

    return Ensemble(**kw)


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
    """Build an unfitted detector, e.g. ``create_detector("patchcore", backbone="efficientnet-lite0")``.

    Raises:
        ConfigError: an option the detector does not take (with the closest valid name), or a value of the wrong
            type for its option (e.g. ``-o image_size=abc``).
    """
    det = DETECTORS.create(name, **kwargs)
    check_options(det, kwargs)
    return det


def detector_options(det: Detector) -> dict[str, Any]:
    """The options a detector takes: name -> default (``inspect.Parameter.empty`` when it has none)."""
    out: dict[str, Any] = {k: inspect.Parameter.empty for k in (*EMBEDDER_KEYS, "sigma", "seed", *det.extra_options)}
    for cls in reversed(type(det).__mro__):
        init = cls.__dict__.get("__init__")
        if init is None or cls is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                out[p.name] = p.default
    return out


_TYPES = {"image_size": int, "pool": (int, list, tuple), "pool_pad": str, "rings": int,
          "ring_cap": (int, float, type(None)), "tile": (int, type(None)), "min_side": (int, type(None)),
          "max_downscale": (int, type(None)), "geometry": str,
          "sigma": (int, float), "fuse": (str, int, float)}  # adapted: "auto" or a weight


def _type_ok(value: Any, wants: tuple[type, ...]) -> bool:
    return bool in wants if isinstance(value, bool) else isinstance(value, wants)


def check_options(det: Detector, given: dict[str, Any]) -> None:
    """Refuse unknown option names and values whose type differs from the option's default (ints may stand for
    floats, nothing stands for a bool)."""
    valid = detector_options(det)
    for key, value in given.items():
        if key not in valid:
            close = difflib.get_close_matches(key, list(valid), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{det.name} has no option {key!r}{hint} Valid options: {', '.join(sorted(valid))}")
        default = valid[key]
        want = _TYPES.get(key) or (type(default) if isinstance(default, (bool, int, float, str)) else None)
        wants = (int, float) if want is float else want if isinstance(want, tuple) else (want,)
        if want is not None and not _type_ok(value, wants):
            names = " or ".join("none" if t is type(None) else t.__name__ for t in wants)
            raise ConfigError(f"{det.name} option {key!r} takes {names}, got {value!r}")
    sigma = given.get("sigma")
    if sigma is not None and sigma < 0:
        raise ConfigError(f"{det.name} option 'sigma' (map smoothing, pixels) must be >= 0, got {sigma}")


def list_detectors(pattern: str | None = None) -> list[str]:
    """Registered detector names."""
    return DETECTORS.names(pattern)


def load_detector(directory: str | Path) -> Detector:
    """Load a detector saved with ``Detector.save`` (``vlm-ad fit --out DIR``)."""
    meta, tensors = read_artifact(directory, "detector.json", "detector.safetensors", kind="detector",
                                  version=FORMAT_VERSION, what="saved model",
                                  remedy="create one with 'vlm-ad fit DATA --out DIR'")
    if meta.get("detector") == "ensemble":  # members in sub-folders, no embedder of its own
        from vlm_ad.detectors.ensemble import Ensemble

        try:
            det = Ensemble.load(Path(directory), meta, tensors)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{Path(directory) / 'detector.json'} is malformed ({exc!r}); re-create the model with "
                              "'vlm-ad fit'") from exc
        det.threshold_ = _saved_threshold(meta, directory)
        return det
    try:
        emb = meta["embedder"]
        geometry = {"geometry": emb.get("geometry", "square"), "tile": emb.get("tile"),  # older models: square
                    "input_shape": emb.get("input_shape"), "min_side": emb.get("min_side"),
                    "max_downscale": emb.get("max_downscale"),
                    "pool_pad": emb.get("pool_pad", "zero")}  # older models: zero
        geometry = geometry if emb["backbone"] != "pixels" else {}
        det = create_detector(meta["detector"], backbone=emb["backbone"], layers=emb["layers"],
                              image_size=emb["image_size"], pool=emb["pool"], **geometry,
                              **{k: v for k, v in meta["hyper"].items()
                                 if k not in EMBEDDER_KEYS})
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{Path(directory) / 'detector.json'} is malformed ({exc!r}); re-create the model with "
                          "'vlm-ad fit'") from exc
    det.embedder_ = det._make_embedder()
    if det.embedder_ is not None and "normalize" in emb:  # the saved embedder is the truth
        det.embedder_.normalize = bool(emb["normalize"])
    det._load_state(tensors, meta, Path(directory))
    det.threshold_ = _saved_threshold(meta, directory)
    return det


def _saved_threshold(meta: dict[str, Any], directory: str | Path) -> float | None:
    threshold = meta.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not math.isfinite(threshold)):
        raise ConfigError(f"{Path(directory) / 'detector.json'}: threshold must be a finite number or null, got "
                          f"{threshold!r}; fix it or set one with 'vlm-ad detect --threshold'")
    return threshold
