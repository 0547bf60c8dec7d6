"""Generative detectors (survey family "generative"): autoencoders trained on normal data only.

``ae``          convolutional autoencoder on pixels; map = per-pixel reconstruction error
``vae``         convolutional VAE (spatial latent) on pixels; map = reconstruction error of the mean latent
``cavga``       the VAE trained with CAVGA's attention-expansion loss (Venkataramanan et al. 2020); map = 1 - attention
``feature-ae``  a 1x1/3x3 convolutional autoencoder over frozen backbone patch features; map = feature error

Pixel-space detectors resize every image to ``image_size`` (a multiple of 8) and need no backbone; maps come back
at each image's own resolution. Every generative detector also gives a Grad-CAM attention map of its
reconstruction error (:meth:`GenerativeMixin.attention_maps`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlm_ad.detectors import _train
from vlm_ad.detectors.base import Detector, ImageLike, as_images, resize_map
from vlm_ad.detectors.gradcam import cam_from
from vlm_ad.detectors.threshold import ThresholdPolicy
from vlm_ad.errors import ConfigError, DataError
from vlm_ad.types import AnomalyMap

PIXELS = "pixels"  # the "backbone" name recorded for detectors that work on raw pixels


# --------------------------------------------------------------------------------------------- networks
class ConvAE(nn.Module):
    """Strided-conv encoder to a spatial latent (S/8 x S/8 x ``latent``), transposed-conv decoder, sigmoid output.

    With ``variational`` the latent conv predicts mean and log-variance and training samples from them.
    """

    def __init__(self, *, channels: Sequence[int] = (32, 64, 128), latent: int = 16, variational: bool = False,
                 in_ch: int = 3) -> None:
        super().__init__()
        self.variational = variational
        layers, c = [], in_ch
        for width in channels:
            layers += [nn.Conv2d(c, width, 4, 2, 1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2)]
            c = width
        self.encoder = nn.Sequential(*layers)  # (B, C, S/8, S/8): the Grad-CAM layer
        self.to_latent = nn.Conv2d(c, latent * (2 if variational else 1), 1)
        dec: list[nn.Module] = [nn.Conv2d(latent, c, 1), nn.LeakyReLU(0.2)]
        for width in list(channels[-2::-1]) + [32]:
            dec += [nn.ConvTranspose2d(c, width, 4, 2, 1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2)]
            c = width
        self.decoder = nn.Sequential(*dec, nn.Conv2d(c, in_ch, 3, 1, 1), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B, 3, S, S) -> encoder features (B, C, S/8, S/8), mean latent, log-variance (None for a plain AE)."""
        feats = self.encoder(x)
        z = self.to_latent(feats)
        if not self.variational:
            return feats, z, None
        mu, logvar = z.chunk(2, dim=1)
        return feats, mu, logvar.clamp(-10, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Reconstruction (B, 3, S, S), mean latent, log-variance, encoder features."""
        feats, mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training and logvar is not None else mu
        return self.decoder(z), mu, logvar, feats


class FeatureAE(nn.Module):
    """Autoencoder over a (B, C, h, w) feature grid: 1x1 conv down to ``latent`` channels via a 3x3 conv, and back."""

    def __init__(self, in_ch: int, *, hidden: int = 128, latent: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(in_ch, hidden, 1), nn.LeakyReLU(0.2),
                                     nn.Conv2d(hidden, hidden, 3, 1, 1), nn.LeakyReLU(0.2))
        self.to_latent = nn.Conv2d(hidden, latent, 1)
        self.decoder = nn.Sequential(nn.Conv2d(latent, hidden, 3, 1, 1), nn.LeakyReLU(0.2),
                                     nn.Conv2d(hidden, in_ch, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, torch.Tensor]:
        feats = self.encoder(x)
        z = self.to_latent(feats)
        return self.decoder(z), z, None, feats


def recon_error(x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) inputs and reconstructions -> (B, h, w) squared error averaged over channels."""
    return (x - rec).pow(2).mean(1)


def kl_term(mu: torch.Tensor, logvar: torch.Tensor | None) -> torch.Tensor:
    """Mean KL divergence of N(mu, exp(logvar)) from N(0, 1) per latent element (0 for a plain AE)."""
    if logvar is None:
        return mu.new_zeros(())
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()


def expansion_attention(feats: torch.Tensor, mu: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
    """CAVGA attention: Grad-CAM of the latent's sum over the encoder features, scaled to max 1 per image."""
    cam = cam_from(feats, mu.flatten(1).sum(1), create_graph=create_graph)  # (B, h, w)
    return cam / (cam.flatten(1).amax(1).view(-1, 1, 1) + 1e-8)


# --------------------------------------------------------------------------------------------- detectors
class _PixelInput:
    """Stands in for the PatchEmbedder of backbone detectors: resizes images to (B, 3, S, S) floats in [0, 1]."""

    def __init__(self, image_size: int) -> None:
        self.image_size = self.check(image_size)
        self.backbone_name = PIXELS

    @staticmethod
    def check(image_size: int) -> int:
        if image_size < 16 or image_size % 8:
            raise ConfigError(f"pixel-space detectors need image_size a multiple of 8 and >= 16, got {image_size}")
        return image_size

    def config(self) -> dict[str, Any]:
        return {"backbone": PIXELS, "layers": [], "image_size": self.image_size, "pool": 1}

    def __call__(self, images: Sequence[np.ndarray], *, progress=None, **_: Any) -> torch.Tensor:
        out = []
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise DataError(f"image {i}: expected uint8 RGB (H, W, 3), got {img.dtype} {img.shape}")
            t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0
            out.append(F.interpolate(t, size=(self.image_size,) * 2, mode="bilinear", antialias=True,
                                     align_corners=False))
            if progress:
                progress(1)
        return torch.cat(out).clamp_(0, 1)  # (B, 3, S, S)

    def aggregate(self, layers: dict) -> torch.Tensor:
        raise ConfigError("pixel-space detectors do not use backbone features: call fit()/predict() on images")


class GenerativeMixin:
    """Training, scoring, persistence and Grad-CAM shared by the autoencoder detectors.

    Subclasses set ``self.net_`` (built by ``_build``) and receive inputs as (N, C, h, w) tensors.
    """

    extra_options = ("epochs", "batch_size", "lr", "patience", "val_fraction", "max_seconds", "verbose", "beta",
                     "expansion", "hidden")

    net_: nn.Module | None
    history_: _train.History | None

    def _train_config(self) -> _train.TrainConfig:
        h = self.hyper
        return _train.TrainConfig(epochs=h["epochs"], batch_size=h["batch_size"], lr=h["lr"], patience=h["patience"],
                                  val_fraction=h["val_fraction"], max_seconds=h["max_seconds"], seed=h["seed"])

    def _loss(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        rec, mu, logvar, _ = net(x)
        return recon_error(x, rec).mean() + self.hyper.get("beta", 0.0) * kl_term(mu, logvar)

    def _fit_tensor(self, x: torch.Tensor) -> None:
        if len(x) == 0:
            raise DataError(f"{self.name} needs normal images to train on (it is not zero-shot)")
        torch.manual_seed(self.hyper["seed"])
        self.net_ = self._build(x.shape[1])
        self.history_ = _train.train(self.net_, x, self._loss, self._train_config(), verbose=self.hyper["verbose"])

    def _grids(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) inputs -> (B, h, w) anomaly-map grids (reconstruction error by default)."""
        return self._recon_grids(x)

    def _recon_grids(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) inputs -> (B, h, w) reconstruction errors."""
        out = []
        with torch.no_grad():
            for chunk in x.split(16):
                out.append(recon_error(chunk, self.net_(chunk)[0]))
        return torch.cat(out)

    def _calibrate(self, x: torch.Tensor, ids: list[str]) -> float | None:
        """99th percentile of the held-out normal images' scores (None when nothing was held out)."""
        val = self.history_.val_index
        if len(x) < 2 or not val:
            return None
        scores = [self.image_score(g) for g in self._recon_grids(x[val])]
        return ThresholdPolicy(quantile=0.99).fit(np.array(scores)).threshold_

    def _is_fitted(self) -> bool:
        return self.net_ is not None

    def _state(self) -> dict[str, torch.Tensor]:
        return {f"net.{k}": v for k, v in self.net_.state_dict().items()}

    def _extra_meta(self, directory: Path) -> dict[str, Any]:
        return {"in_channels": self._in_channels, "history": self.history_.to_json()}

    def _load_state(self, tensors, meta, directory: Path) -> None:
        self.net_ = self._build(int(meta["extra"]["in_channels"]))
        self.net_.load_state_dict({k[len("net.") :]: v for k, v in tensors.items() if k.startswith("net.")})
        self.net_.eval()
        self.history_ = _train.History(**meta["extra"]["history"])

    def _net_input(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """What the network takes for these images: (B, C, h, w)."""
        return self._embed(arrays, None)

    def attention_maps(self, images: Sequence[ImageLike]) -> list[AnomalyMap]:
        """Grad-CAM of the reconstruction error at the encoder's last layer, one map per image (its resolution).

        The score of each returned map is the detector's own image score, so the maps can be evaluated as an
        alternative explanation of the same decisions.
        """
        self._check_fitted()
        arrays, ids = as_images(images)
        x = self._net_input(arrays)
        out = []
        for chunk, arr_chunk, id_chunk in zip(x.split(8), _chunks(arrays, 8), _chunks(ids, 8)):
            with torch.enable_grad():
                rec, _, _, feats = self.net_(chunk)
                cam = cam_from(feats, recon_error(chunk, rec).flatten(1).mean(1)).detach()
            scores = [self.image_score(g) for g in self._recon_grids(chunk)]
            for c, img, i, s in zip(cam, arr_chunk, id_chunk, scores):
                work = self.smooth(c)
                out.append(AnomalyMap(i, s, resize_map(work, img.shape[:2]), threshold=self.threshold_))
        return out


def _chunks(seq: list, n: int) -> list[list]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]


_TRAIN_DEFAULTS = {"epochs": 30, "batch_size": 16, "lr": 1e-3, "patience": 5, "val_fraction": 0.15,
                   "max_seconds": None, "verbose": False}


class AutoEncoder(GenerativeMixin, Detector):
    """Convolutional autoencoder on pixels; anomaly map = squared reconstruction error.

    Args:
        backbone: ignored (recorded as ``"pixels"``); accepted so every detector is built the same way.
        image_size: side of the square input (multiple of 8; 128-256 are CPU-sized).
        channels: encoder widths (each halves the resolution); the decoder mirrors them.
        latent: channels of the (S/8, S/8) latent.
        epochs, batch_size, lr, patience, val_fraction, max_seconds: training (see :class:`TrainConfig`).
        seed: seed of the split, shuffling and weights.
        sigma: map smoothing in pixels of a 256 px map.
        verbose: log every epoch's losses.
    """

    name = "ae"
    variational = False

    def __init__(self, backbone: Any = PIXELS, *, image_size: int = 128, channels: Sequence[int] = (32, 64, 128),
                 latent: int = 16, seed: int = 0, layers: Any = None, pool: Any = None, **hyper: Any) -> None:
        unknown = set(hyper) - set(_TRAIN_DEFAULTS) - {"sigma", "beta", "expansion"}
        if unknown:
            raise ConfigError(f"{self.name}: unknown options {sorted(unknown)}; allowed: "
                              f"{sorted(set(_TRAIN_DEFAULTS) | {'sigma', 'channels', 'latent', 'seed'})}")
        if len(channels) != 3 or latent < 1:
            raise ConfigError(f"{self.name}: channels must list 3 widths and latent >= 1, got {channels}, {latent}")
        self.backbone = PIXELS
        self.hyper = {**_TRAIN_DEFAULTS, **hyper, "image_size": image_size, "channels": list(channels),
                      "latent": latent, "seed": seed}
        _PixelInput.check(image_size)
        self.embedder_ = None
        self.threshold_ = None
        self.timings_ = {"embed": 0.0, "score": 0.0}
        self.net_, self.history_, self._in_channels = None, None, 3

    def _make_embedder(self) -> _PixelInput:
        return _PixelInput(self.hyper["image_size"])

    def _build(self, in_ch: int) -> nn.Module:
        return ConvAE(channels=self.hyper["channels"], latent=self.hyper["latent"], variational=self.variational)

    def _fit_embeddings(self, x: torch.Tensor, ids: list[str]) -> None:
        self._fit_tensor(x)

    def _score_embeddings(self, x: torch.Tensor):
        return self._grids(x), [[] for _ in range(len(x))]


class VAE(AutoEncoder):
    """Convolutional VAE with a spatial latent; map = reconstruction error of the mean latent.

    Args:
        beta: weight of the KL term (per latent element) against the per-pixel reconstruction error.
        **kw: as :class:`AutoEncoder`.
    """

    name = "vae"
    variational = True

    def __init__(self, backbone: Any = PIXELS, *, beta: float = 0.01, **kw: Any) -> None:
        if beta < 0:
            raise ConfigError(f"beta must be >= 0, got {beta}")
        super().__init__(backbone, beta=beta, **kw)


class CAVGA(VAE):
    """VAE trained with CAVGA's attention-expansion loss; anomaly map = 1 - attention, score = reconstruction.

    During training, the Grad-CAM attention of the latent over the encoder's last layer (scaled to max 1) is
    pushed to cover the whole normal image (loss ``expansion * (1 - mean attention)``), so at test time regions
    the model does not attend to - the unfamiliar ones - stand out. Unsupervised variant (CAVGA-R_u) without the
    adversarial discriminator.

    Args:
        expansion: weight of the attention-expansion loss.
        **kw: as :class:`VAE`.
    """

    name = "cavga"

    def __init__(self, backbone: Any = PIXELS, *, expansion: float = 1.0, **kw: Any) -> None:
        if expansion < 0:
            raise ConfigError(f"expansion must be >= 0, got {expansion}")
        super().__init__(backbone, expansion=expansion, **kw)

    def _loss(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        rec, mu, logvar, feats = net(x)
        att = expansion_attention(feats, mu, create_graph=True)  # (B, h, w)
        base = recon_error(x, rec).mean() + self.hyper["beta"] * kl_term(mu, logvar)
        return base + self.hyper["expansion"] * (1 - att.mean())

    def _grids(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in x.split(16):
            with torch.enable_grad():
                feats, mu, _ = self.net_.encode(chunk)
                out.append(1 - expansion_attention(feats, mu, create_graph=False).detach())
        return torch.cat(out)  # (B, S/8, S/8)

    def predict(self, images: Sequence[ImageLike], *, progress=None) -> list[AnomalyMap]:
        maps = super().predict(images, progress=progress)
        x = self._embed(as_images(images)[0], None)
        for m, g in zip(maps, self._recon_grids(x)):
            m.score = self.image_score(g)
        return maps


class FeatureReconstruction(GenerativeMixin, Detector):
    """Autoencoder over frozen backbone patch features; anomaly map = squared feature reconstruction error.

    Args:
        backbone: backbone name or instance.
        hidden: width of the feature autoencoder.
        latent: bottleneck channels.
        epochs, batch_size, lr, patience, val_fraction, max_seconds, verbose: training (see :class:`TrainConfig`).
        seed: seed of the split, shuffling and weights.
        **hyper: embedder settings (``layers``, ``image_size``, ``pool``) and ``sigma``.
    """

    name = "feature-ae"

    def __init__(self, backbone="efficientnet-lite0", *, hidden: int = 128, latent: int = 32, seed: int = 0,
                 **hyper: Any) -> None:
        train = {k: hyper.pop(k, v) for k, v in _TRAIN_DEFAULTS.items()}
        super().__init__(backbone, hidden=hidden, latent=latent, seed=seed, **train, **hyper)
        self.net_, self.history_, self._in_channels = None, None, 0

    def _build(self, in_ch: int) -> nn.Module:
        self._in_channels = in_ch
        return FeatureAE(in_ch, hidden=self.hyper["hidden"], latent=self.hyper["latent"])

    def _fit_embeddings(self, emb: torch.Tensor, ids: list[str]) -> None:
        self._fit_tensor(emb.permute(0, 3, 1, 2).contiguous())  # (N, C, h, w)

    def _calibrate(self, emb: torch.Tensor, ids: list[str]) -> float | None:
        return super()._calibrate(emb.permute(0, 3, 1, 2).contiguous(), ids)

    def _score_embeddings(self, emb: torch.Tensor):
        return self._grids(emb.permute(0, 3, 1, 2).contiguous()), [[] for _ in range(len(emb))]

    def _load_state(self, tensors, meta, directory: Path) -> None:
        super()._load_state(tensors, meta, directory)
        self._in_channels = int(meta["extra"]["in_channels"])

    def _net_input(self, arrays: list[np.ndarray]) -> torch.Tensor:
        return self._embed(arrays, None).permute(0, 3, 1, 2).contiguous()  # (B, C, h, w)
