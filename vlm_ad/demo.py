"""The offline demo: few-shot nearest-neighbour patch scoring on the simulated textile benchmark.

It embeds a few normal textile images with an offline backbone, scores a handful of normal and defective
ones by the distance of each test patch to its nearest normal patch, prints a table and writes overlays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlm_ad.backbones import Backbone, create_backbone
from vlm_ad.types import AnomalyMap, Features


@dataclass
class DemoResult:
    """What the demo measured: one map per test image, their truth, the threshold, the wall time."""

    maps: list[AnomalyMap]
    labels: list[int]
    defect_types: list[str]
    threshold: float
    seconds: float
    out_dir: Path


def patch_embeddings(feats: Features) -> torch.Tensor:
    """Concatenate layers on the finest grid after 3x3 average pooling: (B, h, w, C) L2-normalised."""
    maps = [F.avg_pool2d(t, 3, stride=1, padding=1) for t in feats.layers.values()]
    size = max(m.shape[-2:] for m in maps)
    maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear") for m in maps]
    emb = torch.cat(maps, dim=1).permute(0, 2, 3, 1)  # (B, h, w, C)
    return F.normalize(emb, dim=-1)


def nn_patch_maps(query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Distance of each query patch (B, h, w, C) to its nearest bank patch (N, C): returns (B, h, w)."""
    b, h, w, c = query.shape
    d = torch.cdist(query.reshape(-1, c), bank).min(dim=1).values
    return d.reshape(b, h, w)


def upsample(grid: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a (h, w) score grid to an image size (H, W), as float32 numpy."""
    return F.interpolate(grid[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def run_demo(
    out_dir: Path,
    *,
    backbone: str = "efficientnet-lite0",
    shots: int = 16,
    per_class: int = 6,
    seed: int = 0,
    progress=None,
) -> DemoResult:
    """Run the demo and write ``<out_dir>/<class>_<stem>.png`` overlays; returns what it measured."""
    from vlm_ad.data import TextileDataset
    from vlm_ad.viz import overlay, side_by_side

    t0 = time.perf_counter()
    net: Backbone = create_backbone(backbone)
    train = TextileDataset("train", seed=seed)
    normal = [train[i] for i in train.sample_shots(shots, seed=seed)]
    test = TextileDataset("test", seed=seed, limit_test=3 * per_class)
    step = progress.add_task("embedding normal images", total=len(normal)) if progress else None
    banks = []
    for s in normal:
        banks.append(patch_embeddings(net.extract([s.image])))
        if progress:
            progress.advance(step)
    bank_imgs = torch.cat(banks)  # (K, h, w, C)
    bank = bank_imgs.reshape(-1, bank_imgs.shape[-1])
    threshold = _leave_one_out_threshold(bank_imgs)
    out_dir.mkdir(parents=True, exist_ok=True)
    step = progress.add_task("scoring test images", total=len(test)) if progress else None
    maps, labels, types = [], [], []
    for i in range(len(test)):
        s = test[i]
        grid = nn_patch_maps(patch_embeddings(net.extract([s.image])), bank)[0]
        amap = AnomalyMap(s.image_id, float(grid.max()), upsample(grid, s.image.shape[:2]), threshold=threshold)
        maps.append(amap)
        labels.append(int(s.label))
        types.append(str(s.defect_type))
        over = overlay(s.image, amap.map, vmin=0.0, vmax=max(threshold * 1.5, 1e-6))
        caption = f"{s.defect_type}: score {amap.score:.3f} ({'ANOMALY' if amap.label else 'normal'})"
        name = s.image_id.replace("/", "_").rsplit(".", 1)[0] + ".png"
        side_by_side(s.image, over, caption).save(out_dir / name)
        if progress:
            progress.advance(step)
    return DemoResult(maps, labels, types, threshold, time.perf_counter() - t0, out_dir)


def _leave_one_out_threshold(bank_imgs: torch.Tensor) -> float:
    """Max score of each normal image against the others; the threshold is the largest of them."""
    k = bank_imgs.shape[0]
    if k < 2:
        return float("inf")
    scores = []
    for i in range(k):
        rest = torch.cat([bank_imgs[:i], bank_imgs[i + 1 :]]).reshape(-1, bank_imgs.shape[-1])
        scores.append(float(nn_patch_maps(bank_imgs[i : i + 1], rest).max()))
    return max(scores)
