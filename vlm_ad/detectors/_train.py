"""One training loop for the generative detectors: seeded, device-agnostic (accelerate), early stopping.

The loop holds out a fraction of the *normal* training tensors as a validation split, keeps the weights of the
best validation epoch, and stops after ``patience`` epochs without improvement or when ``max_seconds`` run out.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from vlm_ad._deps import require
from vlm_ad.errors import ConfigError, DataError

log = logging.getLogger("vlm_ad.train")

LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (net, batch) -> scalar loss


@dataclass
class TrainConfig:
    """Settings of :func:`train`.

    Attributes:
        epochs: maximum number of passes over the training split.
        batch_size: images (or feature grids) per step.
        lr: Adam learning rate.
        val_fraction: share of the normal images held out for early stopping (at least one image).
        patience: epochs without a validation improvement before stopping.
        max_seconds: wall-time budget of the whole loop (None: no budget).
        seed: seed of the split, the shuffling and the initial weights.
    """

    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    val_fraction: float = 0.15
    patience: int = 5
    max_seconds: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.patience < 1:
            raise ConfigError(f"epochs, batch_size, patience must be >= 1 and lr > 0, got {self}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class History:
    """Losses per epoch and why training stopped."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped: str = ""
    seconds: float = 0.0
    val_index: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("train_loss", "val_loss", "best_epoch", "stopped", "seconds")}


def split(n: int, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) index tensors; with one image both are that image."""
    if n < 1:
        raise DataError("training needs at least one normal image")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    n_val = 0 if n < 2 or cfg.val_fraction == 0 else max(1, round(cfg.val_fraction * n))
    return (perm[n_val:], perm[:n_val]) if n_val else (perm, perm)


def train(net: nn.Module, data: torch.Tensor, loss_fn: LossFn, cfg: TrainConfig, *,
          verbose: bool = False) -> History:
    """Train ``net`` on ``data`` (N, ...) with ``loss_fn``; restores the best-validation weights; returns history.

    Runs on the GPU when accelerate finds one (same code on CPU); the net comes back on the CPU in eval mode.
    """
    accelerate = require("accelerate", "training the generative detectors")
    acc = accelerate.Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(cfg.seed)
    tr, va = split(len(data), cfg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    net, opt = acc.prepare(net, opt)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    hist, best, best_state, bad, t0 = History(val_index=va.tolist()), math.inf, None, 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        net.train()
        total = 0.0
        for idx in tr[torch.randperm(len(tr), generator=gen)].split(cfg.batch_size):
            loss = loss_fn(net, data[idx].to(acc.device))
            opt.zero_grad()
            acc.backward(loss)
            opt.step()
            total += float(loss.detach()) * len(idx)
        hist.train_loss.append(total / len(tr))
        hist.val_loss.append(evaluate_loss(net, data[va], loss_fn, cfg.batch_size, acc.device))
        line = f"epoch {epoch}: train {hist.train_loss[-1]:.5f} val {hist.val_loss[-1]:.5f}"
        if verbose:
            print(line, file=sys.stderr, flush=True)  # progress for CLI users; the logger for libraries
        log.info(line)
        if hist.val_loss[-1] < best - 1e-6:
            best, bad, hist.best_epoch = hist.val_loss[-1], 0, epoch
            best_state = {k: v.detach().clone() for k, v in acc.unwrap_model(net).state_dict().items()}
        else:
            bad += 1
        hist.seconds = time.perf_counter() - t0
        if bad >= cfg.patience:
            hist.stopped = f"early stop: no val improvement for {cfg.patience} epochs"
            break
        if cfg.max_seconds is not None and hist.seconds > cfg.max_seconds:
            hist.stopped = f"time budget of {cfg.max_seconds:.0f} s"
            break
    else:
        hist.stopped = f"{cfg.epochs} epochs"
    net = acc.unwrap_model(net)
    if best_state is not None:
        net.load_state_dict(best_state)
    net.cpu().eval()
    return hist


def evaluate_loss(net: nn.Module, data: torch.Tensor, loss_fn: LossFn, batch_size: int, device) -> float:
    """Mean loss over ``data`` in eval mode (gradients still enabled: some losses need them)."""
    net.eval()
    total = 0.0
    for chunk in data.split(batch_size):
        total += float(loss_fn(net, chunk.to(device)).detach()) * len(chunk)
    return total / max(len(data), 1)
