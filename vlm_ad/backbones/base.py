"""The backbone interface: images in, multi-layer patch features ``(B, C, h, w)`` out."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlm_ad.errors import ConfigError, DataError
from vlm_ad.types import Features

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """A frozen feature extractor with its own preprocessing.

    Subclasses implement :meth:`forward` (a normalised ``(B, 3, S, S)`` tensor -> ``{layer: (B, C, h, w)}``)
    and set ``mean``/``std`` (applied to pixels scaled to [0, 1]) and ``patch_multiple`` (input sizes must be
    a multiple of it). ``any_shape`` says whether the network takes non-square inputs of any multiple of
    ``patch_multiple`` (convolutional nets, ViTs that interpolate their position embedding); others stay square.
    """

    name: str = "backbone"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    patch_multiple: int = 1
    any_shape: bool = False

    def __init__(self, *, image_size: int, layers: Sequence[str]) -> None:
        super().__init__()
        if image_size <= 0 or image_size % self.patch_multiple:
            raise ConfigError(
                f"{self.name}: image_size must be a positive multiple of {self.patch_multiple}, got {image_size}"
            )
        self.image_size = int(image_size)
        self.layers = tuple(layers)
        if not self.layers:
            raise ConfigError(f"{self.name}: choose at least one layer from {self.available_layers()}")
        bad = [layer for layer in self.layers if layer not in self.available_layers()]
        if bad:
            raise ConfigError(f"{self.name}: unknown layers {bad}; available: {self.available_layers()}")

    def available_layers(self) -> tuple[str, ...]:
        """Names of the layers this backbone can return."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, images: Sequence[np.ndarray], *, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Resize uint8 RGB images (any size) to ``size`` (H, W), by default ``image_size`` square, and normalise:
        returns (B, 3, H, W) float32."""
        size = (self.image_size, self.image_size) if size is None else (int(size[0]), int(size[1]))
        batch = []
        for i, img in enumerate(images):
            img = np.asarray(img)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise DataError(
                    f"image {i}: expected uint8 RGB of shape (H, W, 3), got {img.dtype} {img.shape}; "
                    "load files with vlm_ad.data.load_image"
                )
            t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)
            if t.shape[-2:] != size:
                t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
            batch.append(t)
        x = torch.cat(batch).clamp_(0, 1)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def extract(self, images: Sequence[np.ndarray], *, batch_size: int = 8,
                size: tuple[int, int] | None = None) -> Features:
        """Preprocess (to ``size``, default ``image_size`` square) and run the backbone in batches; features come
        back on the CPU."""
        if len(images) == 0:
            raise DataError("extract() got no images")
        self.eval()
        outs: dict[str, list[torch.Tensor]] = {}
        for start in range(0, len(images), batch_size):
            x = self.preprocess(images[start : start + batch_size], size=size).to(self.device)
            for name, feat in self(x).items():
                outs.setdefault(name, []).append(feat.float().cpu())
        return Features({k: torch.cat(v) for k, v in outs.items()}, tuple(x.shape[-2:]))

    def iter_batches(self, images: Iterable[np.ndarray], *, batch_size: int = 8) -> Iterable[Features]:
        """Yield :class:`Features` for consecutive batches of a (possibly lazy) image stream."""
        buf: list[np.ndarray] = []
        for img in images:
            buf.append(img)
            if len(buf) == batch_size:
                yield self.extract(buf, batch_size=batch_size)
                buf = []
        if buf:
            yield self.extract(buf, batch_size=batch_size)
