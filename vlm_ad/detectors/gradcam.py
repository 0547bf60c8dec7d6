"""Grad-CAM (Selvaraju et al. 2017) of a differentiable anomaly score: an attention explanation for any detector.

The score is any function of the input whose value grows with abnormality (reconstruction error, Mahalanobis
distance, a CLIP prompt logit). Its gradient with respect to a convolutional or attention layer's activations,
averaged over space, weights that layer's channels; the positive part of the weighted sum is the attention map:
where the layer "looked" to raise the score.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vlm_ad.errors import ConfigError

__all__ = ["cam_from", "grad_cam"]


def cam_from(acts: torch.Tensor, score: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
    """Grad-CAM of ``score`` over activations already in its graph.

    Args:
        acts: (B, C, h, w) activations that ``score`` depends on (token grids reshaped to a grid first).
        score: (B,) per-image scores (higher = more anomalous); images must not interact.
        create_graph: keep the graph so the map itself can be trained on (CAVGA's attention expansion).

    Returns:
        (B, h, w) non-negative attention maps (not normalised).
    """
    if acts.ndim != 4 or score.ndim != 1 or score.shape[0] != acts.shape[0]:
        raise ConfigError(f"cam_from needs acts (B, C, h, w) and score (B,), got {tuple(acts.shape)} and "
                          f"{tuple(score.shape)}")
    grads = torch.autograd.grad(score.sum(), acts, create_graph=create_graph, retain_graph=True)[0]
    weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    return F.relu((weights * acts).sum(1))  # (B, h, w)


def grad_cam(score_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, layer: nn.Module, *,
             size: tuple[int, int] | None = None) -> torch.Tensor:
    """Grad-CAM of ``score_fn(x)`` at the output of ``layer`` (hooked for one forward pass).

    Args:
        score_fn: (B, ...) inputs -> (B,) differentiable anomaly scores.
        x: the input batch.
        layer: a module run inside ``score_fn`` whose output is (B, C, h, w).
        size: upsample the maps to this (H, W) (bilinear); default the layer's grid.

    Returns:
        (B, h, w) or (B, *size) maps, detached, on the CPU.
    """
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.enable_grad():
            score = score_fn(x)
    finally:
        handle.remove()
    if not seen:
        raise ConfigError(f"grad_cam: layer {type(layer).__name__} did not run inside score_fn")
    cam = cam_from(seen[-1], score).detach()
    if size is not None:
        cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return cam.cpu()
