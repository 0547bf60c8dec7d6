"""A short reference PatchCore, written apart from vlm_ad's detectors, to hold the product's rows against.

Issue 12 measured vlm-ad against "a 150-line reference PatchCore (same EfficientNet-Lite0 / DINOv2-S weights, exact
kNN, greedy coreset 10%) that resizes each image to a fixed LONG side (a multiple of the patch stride) keeping its
aspect ratio, and scores maps at that size". This is that recipe, as in the PatchCore paper (Roth et al., CVPR 2022)
and anomalib's implementation; only the network weights and their forward pass are shared with vlm_ad
(``create_backbone``), so a fault in vlm_ad's geometry, aggregation, memory bank, search or map code does not carry
over:

1. resize (bilinear, antialiased) so that the long side is ``long_side`` and the short side the nearest multiple of
   the network's stride; normalise with the network's mean / std;
2. each chosen layer's features averaged over a 3 x 3 neighbourhood (at the border over the cells inside the grid;
   ``pad_counts=True``: zero padding counted, as ``torch.nn.AvgPool2d(3, 1, 1)`` in anomalib and in vlm_ad), the
   coarser grids resized (bilinear) to the finest, concatenated;
3. memory bank: greedy k-center coreset of ``coreset`` of the normal patches, chosen on a random projection to 128
   dimensions, started at a seeded random patch;
4. patch score: exact Euclidean distance to the nearest bank patch (``torch.cdist``); image score: the largest;
5. map: patch scores resized (bilinear) to the input, blurred with a Gaussian of sigma 4 input pixels, resized to the
   image.

    from reference_patchcore import ReferencePatchCore   # with eval/ on sys.path
    ref = ReferencePatchCore("efficientnet-lite0", long_side=256).fit(normal_images)
    [(score, map), ...] = ref.predict(test_images)      # images: uint8 RGB (H, W, 3) arrays
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from vlm_ad.backbones import create_backbone

DEFAULT_LAYERS = {"efficientnet-lite0": ("block4", "block10"), "dinov2-s14": ("block7",)}


class ReferencePatchCore:
    def __init__(self, backbone: str, *, long_side: int, layers: Sequence[str] | None = None, coreset: float = 0.1,
                 seed: int = 0, sigma: float = 4.0, pad_counts: bool = False) -> None:
        self.layers = tuple(layers or DEFAULT_LAYERS[backbone])
        self.net = create_backbone(backbone, layers=self.layers).eval()
        self.stride = int(self.net.patch_multiple)
        if long_side % self.stride:
            raise ValueError(f"long_side must be a multiple of {self.stride}, got {long_side}")
        self.long_side, self.coreset, self.seed, self.sigma = long_side, coreset, seed, sigma
        self.pad_counts = pad_counts
        self.bank: torch.Tensor | None = None

    def input_shape(self, h: int, w: int) -> tuple[int, int]:
        s = self.long_side / max(h, w)
        short = max(self.stride, int(round(min(h, w) * s / self.stride)) * self.stride)
        return (self.long_side, short) if h >= w else (short, self.long_side)

    @torch.no_grad()
    def _embed(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Per image: its (h, w, C) patch grid."""
        out: list[torch.Tensor] = []
        mean = torch.tensor(self.net.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.net.std).view(1, 3, 1, 1)
        for img in images:  # one at a time: the inputs differ in shape
            x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0
            x = F.interpolate(x, size=self.input_shape(*img.shape[:2]), mode="bilinear", align_corners=False,
                              antialias=True).clamp(0, 1)
            feats = self.net((x - mean) / std)
            grids = [F.avg_pool2d(feats[name], 3, stride=1, padding=1, count_include_pad=self.pad_counts)
                     for name in self.layers]
            size = max((g.shape[-2:] for g in grids), key=lambda s: s[0] * s[1])
            grids = [g if g.shape[-2:] == size else F.interpolate(g, size=size, mode="bilinear", align_corners=False)
                     for g in grids]
            out.append(torch.cat(grids, 1)[0].permute(1, 2, 0).contiguous())
        return out

    def fit(self, images: Sequence[np.ndarray]) -> ReferencePatchCore:
        patches = torch.cat([g.reshape(-1, g.shape[-1]) for g in self._embed(images)])
        n = max(1, int(len(patches) * self.coreset))
        if n >= len(patches):
            self.bank = patches
            return self
        gen = torch.Generator().manual_seed(self.seed)
        proj = patches @ torch.randn(patches.shape[1], 128, generator=gen) / np.sqrt(128)
        # squared distances as |p|^2 - 2 p.c + |c|^2, one matrix-vector product per centre (torch.cdist against a
        # single row is about 10x slower on 2 cores); the argmax is the same as on distances
        sq = (proj * proj).sum(1)
        picked = [int(torch.randint(len(patches), (1,), generator=gen))]
        dist = sq - 2 * (proj @ proj[picked[0]]) + sq[picked[0]]
        for _ in range(n - 1):
            i = int(dist.argmax())
            picked.append(i)
            dist = torch.minimum(dist, sq - 2 * (proj @ proj[i]) + sq[i])
        self.bank = patches[picked]
        return self

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray]) -> list[tuple[float, np.ndarray]]:
        if self.bank is None:
            raise RuntimeError("fit() first")
        out = []
        for img, grid in zip(images, self._embed(images)):
            h, w = grid.shape[:2]
            flat = grid.reshape(-1, grid.shape[-1])
            d = torch.cat([torch.cdist(flat[i : i + 1024], self.bank).min(1).values for i in range(0, len(flat), 1024)])
            patch = d.view(1, 1, h, w)
            m = F.interpolate(patch, size=self.input_shape(*img.shape[:2]), mode="bilinear", align_corners=False)
            k = 2 * int(4 * self.sigma + 0.5) + 1
            m = gaussian_blur(m, [k, k], [self.sigma, self.sigma])
            m = F.interpolate(m, size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0]
            out.append((float(d.max()), m.numpy()))
        return out
