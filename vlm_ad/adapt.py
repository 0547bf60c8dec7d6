"""Per-category adaptation: LoRA (peft) on chosen DINOv2 blocks + a small cosine/temperature patch head, trained
on a category's own normal images against synthetic anomalies painted on them (:func:`vlm_ad.data.make_defect`).

The SimpleNet / DRAEM idea with normal images only: half of each batch gets one synthetic defect, every patch is
labelled by the share of its pixels inside the defect mask, and the head learns ``p(anomalous | patch)``. A held-out
synthetic split (defects painted with a fixed seed on held-out normal images) drives early stopping. Training
resumes after an interruption from ``<out>/checkpoint`` (written after each epoch); device placement goes through
``accelerate`` so the same loop runs on a GPU.

An adapter folder holds the peft files ``adapter_config.json`` + ``adapter_model.safetensors``, the head
``head.safetensors``, ``adapt.json`` (recipe, backbone, history) and a ``README.md`` card.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlm_ad._cache import atomic_write_bytes
from vlm_ad._deps import require
from vlm_ad.artifacts import read_meta, write_meta
from vlm_ad.errors import ConfigError, DataError

__all__ = ["AdaptConfig", "CosineHead", "TrainResult", "adapter_backbone", "inject_lora", "load_adapter",
           "lora_disabled", "save_adapter", "train_adapter"]

ADAPTER_FORMAT = 1  # of adapt.json (see vlm_ad.artifacts)
_LINEARS = ("qkv", "proj", "fc1", "fc2")


@dataclass
class AdaptConfig:
    """The recipe of one adaptation run (validated on construction).

    Attributes:
        backbone: registered backbone name (only ``dinov2-s14`` is adapted here).
        layers: backbone layers the head reads (concatenated, each L2-normalised per patch).
        lora_blocks: transformer blocks that get LoRA on their ``modules`` linear layers.
        modules: which linear layers of a block: any of ``qkv``, ``proj``, ``fc1``, ``fc2``.
        rank: LoRA rank; ``alpha`` its scaling numerator.
        image_size: the square training input size (a multiple of 14); the ``adapted`` detector embeds at its own
            input (PatchCore's dinov2-s14 default unless given), where its head scores each patch alone.
        epochs, steps_per_epoch, batch_size: the schedule; half of each batch carries a synthetic defect.
        lr: AdamW learning rate (LoRA and head).
        patience: epochs without held-out improvement before stopping.
        val_fraction: share of the normal images held out for the synthetic validation split (at least one).
        pos_weight: BCE weight of anomalous patches (they are rare).
        head_dim: projection width of the cosine head.
        seed: seeds images, defects and initialisation.
    """

    backbone: str = "dinov2-s14"
    layers: tuple[str, ...] = ("block5", "block7")
    lora_blocks: tuple[int, ...] = (6, 7)
    modules: tuple[str, ...] = _LINEARS
    rank: int = 4
    alpha: int = 8
    image_size: int = 224
    epochs: int = 6
    steps_per_epoch: int = 8
    batch_size: int = 8
    lr: float = 1e-3
    patience: int = 2
    val_fraction: float = 0.2
    pos_weight: float = 4.0
    head_dim: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        self.layers, self.lora_blocks, self.modules = tuple(self.layers), tuple(self.lora_blocks), tuple(self.modules)
        if self.backbone != "dinov2-s14":
            raise ConfigError(f"adaptation supports backbone 'dinov2-s14' only, got {self.backbone!r}")
        bad = [m for m in self.modules if m not in _LINEARS]
        if bad or not self.modules:
            raise ConfigError(f"modules must be a non-empty subset of {_LINEARS}, got {self.modules}")
        if not self.lora_blocks or any(not 0 <= b < 12 for b in self.lora_blocks):
            raise ConfigError(f"lora_blocks must be block indices 0..11, got {self.lora_blocks}")
        deepest = max(int(layer[5:]) for layer in self.layers)
        if max(self.lora_blocks) > deepest:
            raise ConfigError(f"LoRA on block {max(self.lora_blocks)} would not change the head's layers "
                              f"{self.layers}; use lora_blocks <= {deepest}")
        if self.rank < 1 or self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 2:
            raise ConfigError("rank, epochs, steps_per_epoch must be >= 1 and batch_size >= 2; got "
                              f"{self.rank}, {self.epochs}, {self.steps_per_epoch}, {self.batch_size}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    def target_modules(self) -> list[str]:
        """Fully qualified names of the LoRA'd linear layers inside ``ViTS14``."""
        return [f"blocks.{b}.{m}" for b in self.lora_blocks for m in self.modules]


class CosineHead(nn.Module):
    """Patch features (B, h, w, C) -> anomaly logits (B, h, w): cosine to two prototypes over a temperature."""

    def __init__(self, in_dim: int, dim: int = 64) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.protos = nn.Parameter(torch.randn(2, dim) * 0.1)  # normal, anomalous
        self.log_temp = nn.Parameter(torch.tensor(math.log(0.1)))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.proj(feats), dim=-1)  # (B, h, w, D)
        cos = z @ F.normalize(self.protos, dim=-1).T  # (B, h, w, 2)
        return (cos[..., 1] - cos[..., 0]) / self.log_temp.exp().clamp(min=1e-2)  # (B, h, w)


def head_features(layers: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate per-patch L2-normalised layers ``{name: (B, C, h, w)}`` -> (B, h, w, sum C)."""
    return torch.cat([F.normalize(t, dim=1) for t in layers.values()], dim=1).permute(0, 2, 3, 1)


# ------------------------------------------------------------------------------------------------ LoRA plumbing
def _lora_config(cfg: AdaptConfig):
    peft = require("peft", "LoRA adapters")
    return peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=cfg.target_modules(), lora_dropout=0.0,
                           bias="none", init_lora_weights=True)


def inject_lora(net: nn.Module, cfg: AdaptConfig) -> nn.Module:
    """Inject LoRA layers into a DINOv2 backbone's ``vit`` in place; only LoRA parameters stay trainable."""
    peft = require("peft", "LoRA adapters")
    vit = getattr(net, "vit", None)
    names = {n for n, _ in vit.named_modules()} if vit is not None else set()
    missing = [t for t in cfg.target_modules() if t not in names]
    if vit is None or missing:
        raise ConfigError(f"backbone {getattr(net, 'name', type(net).__name__)!r} has no modules {missing[:4]}; "
                          "LoRA adaptation needs a dinov2-s14 backbone (create_backbone('dinov2-s14'))")
    net.requires_grad_(False)
    peft.inject_adapter_in_model(_lora_config(cfg), vit)
    for n, p in vit.named_parameters():
        p.requires_grad_("lora_" in n)
    return net


def lora_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of an injected backbone, in peft's file naming."""
    peft = require("peft", "LoRA adapters")
    return {k: v.detach().cpu().clone().contiguous() for k, v in peft.get_peft_model_state_dict(net.vit).items()}


def save_adapter(directory: str | Path, net: nn.Module, head: CosineHead, cfg: AdaptConfig, *,
                 history: Sequence[dict] = (), card: str | None = None, extra: dict | None = None) -> Path:
    """Write the peft files, ``head.safetensors``, ``adapt.json`` and a ``README.md`` card (atomically)."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lcfg = _lora_config(cfg).to_dict()
    lcfg["base_model_name_or_path"] = cfg.backbone
    lcfg = json.loads(json.dumps(lcfg, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))
    atomic_write_bytes(directory / "adapter_config.json", json.dumps(lcfg, indent=2).encode())
    atomic_write_bytes(directory / "adapter_model.safetensors", save(lora_state(net)))
    head_sd = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    atomic_write_bytes(directory / "head.safetensors", save(head_sd))
    meta = {"config": asdict(cfg), "history": list(history), **(extra or {})}
    write_meta(directory / "adapt.json", kind="adapter", version=ADAPTER_FORMAT, meta=meta)
    atomic_write_bytes(directory / "README.md", (card or model_card(cfg, history, extra or {})).encode())
    return directory


@contextlib.contextmanager
def lora_disabled(net: nn.Module):
    """Run ``net`` as the frozen backbone inside the block: every LoRA layer (peft) is switched off, then back on."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in net.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield net
    finally:
        for m in layers:
            m.enable_adapters(True)


def adapter_backbone(directory: str | Path) -> str:
    """The backbone name an adapter folder was trained on (recorded in its ``adapt.json``).

    Raises:
        DataError: the folder is not an adapter folder.
    """
    path = Path(directory) / "adapt.json"
    try:
        return str(json.loads(path.read_text())["config"]["backbone"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DataError(f"{directory} is not a vlm-ad adapter: no readable adapt.json with config.backbone "
                        f"({exc!r}); create one with 'vlm-ad adapt DATA --out DIR'") from exc


def load_adapter(directory: str | Path, *, net: nn.Module | None = None) -> tuple[nn.Module, CosineHead, AdaptConfig]:
    """Load an adapter folder onto a (new, or given) DINOv2 backbone; checks the adapter fits that backbone.

    Raises:
        DataError: the folder lacks the adapter files.
        ConfigError: the adapter was made for another backbone, or its tensors do not fit it.
    """
    from safetensors.torch import load_file

    from vlm_ad.backbones import create_backbone

    directory = Path(directory)
    need = ("adapter_config.json", "adapter_model.safetensors", "head.safetensors", "adapt.json")
    if not all((directory / f).is_file() for f in need):
        raise DataError(f"{directory} is not a vlm-ad adapter: expected {', '.join(need)} "
                        "(create one with 'vlm-ad adapt DATA --out DIR')")
    meta = read_meta(directory / "adapt.json", kind="adapter", version=ADAPTER_FORMAT,
                     remedy="create one with 'vlm-ad adapt DATA --out DIR'", what="vlm-ad adapter")
    try:
        cfg = AdaptConfig(**meta["config"])
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{directory / 'adapt.json'} is malformed ({exc!r}); re-run 'vlm-ad adapt'") from None
    if net is None:
        net = create_backbone(cfg.backbone, layers=cfg.layers, image_size=cfg.image_size)
    if getattr(net, "name", None) != cfg.backbone:
        raise ConfigError(f"adapter {directory} was trained on backbone {cfg.backbone!r}, not "
                          f"{getattr(net, 'name', type(net).__name__)!r}; use backbone={cfg.backbone!r}")
    inject_lora(net, cfg)
    _check_fit(directory, load_file(str(directory / "adapter_model.safetensors")), net, cfg)
    head_sd = load_file(str(directory / "head.safetensors"))
    head = CosineHead(head_sd["proj.weight"].shape[1], head_sd["proj.weight"].shape[0])
    expected_in = 384 * len(cfg.layers)
    if head_sd["proj.weight"].shape[1] != expected_in:
        raise ConfigError(f"adapter head in {directory} expects {head_sd['proj.weight'].shape[1]}-d features but "
                          f"layers {cfg.layers} give {expected_in}; the adapter files are inconsistent, re-run adapt")
    head.load_state_dict(head_sd)
    return net.eval(), head.eval(), cfg


def _check_fit(directory: Path, state: dict[str, torch.Tensor], net: nn.Module, cfg: AdaptConfig) -> None:
    peft = require("peft", "LoRA adapters")
    own = lora_state(net)
    if set(state) != set(own):
        extra, missing = sorted(set(state) - set(own))[:3], sorted(set(own) - set(state))[:3]
        raise ConfigError(f"adapter {directory} does not fit backbone {cfg.backbone!r}: unexpected tensors {extra}, "
                          f"missing {missing}; it was made for another model or layout, re-run 'vlm-ad adapt'")
    bad = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in state if state[k].shape != own[k].shape]
    if bad:
        raise ConfigError(f"adapter {directory} does not fit backbone {cfg.backbone!r}: shape mismatch {bad[:2]} "
                          "(file, backbone); it was trained on another model size, re-run 'vlm-ad adapt'")
    peft.set_peft_model_state_dict(net.vit, state)


# ------------------------------------------------------------------------------------------------ data
def _prepare(images: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    from PIL import Image

    return [np.array(Image.fromarray(np.asarray(im)).convert("RGB").resize((size, size), Image.BILINEAR))
            for im in images]


def synthetic_batch(images: Sequence[np.ndarray], rng: np.random.Generator, grid: int,
                    n: int) -> tuple[list[np.ndarray], torch.Tensor]:
    """``n`` images drawn from ``images``, every other one with a synthetic defect; patch targets (n, grid, grid)."""
    from vlm_ad.data import make_defect

    out, targets = [], []
    for j in range(n):
        img = images[int(rng.integers(len(images)))]
        if rng.random() < 0.5:
            img = np.ascontiguousarray(np.rot90(img, int(rng.integers(4))))
        if j % 2:
            img, mask, _ = make_defect(img, None, rng)
        else:
            mask = np.zeros(img.shape[:2], bool)
        out.append(img)
        m = torch.from_numpy(mask.astype(np.float32))[None, None]
        targets.append(F.adaptive_avg_pool2d(m, grid)[0, 0])
    return out, (torch.stack(targets) * 2).clamp(0, 1)  # a patch a half covered counts as fully anomalous


# ------------------------------------------------------------------------------------------------ training
@dataclass
class TrainResult:
    """What :func:`train_adapter` returns: the adapted backbone, the head, and per-epoch history."""

    net: nn.Module
    head: CosineHead
    config: AdaptConfig
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0
    n_train: int = 0
    n_val: int = 0


def _loss(net, head, prep, images, targets, cfg: AdaptConfig, device) -> torch.Tensor:
    x = prep(images).to(device)
    logits = head(head_features(net(x)))  # (B, h, w)
    pw = torch.tensor(cfg.pos_weight, device=device)
    return F.binary_cross_entropy_with_logits(logits, targets.to(device), pos_weight=pw)


def _trainable(net: nn.Module, head: nn.Module) -> dict[str, torch.Tensor]:
    return {**{f"lora.{k}": v for k, v in lora_state(net).items()},
            **{f"head.{k}": v.detach().cpu().clone() for k, v in head.state_dict().items()}}


def _restore(net: nn.Module, head: nn.Module, state: dict[str, torch.Tensor]) -> None:
    peft = require("peft", "LoRA adapters")
    peft.set_peft_model_state_dict(net.vit, {k[5:]: v for k, v in state.items() if k.startswith("lora.")})
    head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})


def train_adapter(normal_images: Sequence[np.ndarray], cfg: AdaptConfig | None = None, *,
                  out: str | Path | None = None, resume: bool = True,
                  progress: Callable[[str, int, int], None] | None = None) -> TrainResult:
    """Train LoRA + head on ``normal_images`` (uint8 RGB) against synthetic defects; writes ``out`` when given.

    Args:
        normal_images: at least two normal images of the category.
        cfg: the recipe (defaults: :class:`AdaptConfig`).
        out: adapter folder; ``out/checkpoint`` is written after each epoch and resumed from when ``resume``.
        progress: called as ``progress(stage, done, total)`` after each training step.
    """
    from vlm_ad.backbones import create_backbone

    cfg = cfg or AdaptConfig()
    if len(normal_images) < 2:
        raise DataError(f"adaptation needs at least 2 normal images (one is held out), got {len(normal_images)}")
    accelerate = require("accelerate", "device placement during adaptation")
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    images = _prepare(normal_images, cfg.image_size)
    order = np.random.default_rng(cfg.seed).permutation(len(images))
    n_val = max(1, int(round(cfg.val_fraction * len(images))))
    train_imgs, val_imgs = [images[i] for i in order[n_val:]], [images[i] for i in order[:n_val]]
    grid = cfg.image_size // 14
    val_x, val_y = synthetic_batch(val_imgs, np.random.default_rng([cfg.seed, 999]), grid, max(4, 2 * len(val_imgs)))

    net = inject_lora(create_backbone(cfg.backbone, layers=cfg.layers, image_size=cfg.image_size), cfg)
    head = CosineHead(384 * len(cfg.layers), cfg.head_dim)
    params = [p for p in net.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    acc = accelerate.Accelerator(cpu=not torch.cuda.is_available())
    prep = net.preprocess
    net, head, opt = acc.prepare(net, head, opt)

    ckpt = Path(out) / "checkpoint" if out else None
    history, best, best_state, start, bad = [], math.inf, None, 0, 0
    if ckpt is not None and resume and (ckpt / "state.json").is_file():
        history, best, best_state, start, bad = _load_checkpoint(ckpt, cfg, acc.unwrap_model(net), head, opt)
    for epoch in range(start, cfg.epochs):
        if bad >= cfg.patience:
            break
        rng = np.random.default_rng([cfg.seed, epoch])
        net.train()
        losses = []
        for step in range(cfg.steps_per_epoch):
            x, y = synthetic_batch(train_imgs, rng, grid, cfg.batch_size)
            loss = _loss(net, head, prep, x, y, cfg, acc.device)
            opt.zero_grad()
            acc.backward(loss)
            opt.step()
            losses.append(loss.item())
            if progress:
                progress(f"epoch {epoch + 1}/{cfg.epochs}", epoch * cfg.steps_per_epoch + step + 1,
                         cfg.epochs * cfg.steps_per_epoch)
        net.eval()
        with torch.no_grad():
            val = float(_loss(net, head, prep, val_x, val_y, cfg, acc.device))
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val})
        if val < best - 1e-4:
            best, best_state, bad = val, _trainable(acc.unwrap_model(net), head), 0
        else:
            bad += 1
        if ckpt is not None:
            _save_checkpoint(ckpt, cfg, acc.unwrap_model(net), head, opt, history, best, best_state, epoch + 1, bad)
    net, head = acc.unwrap_model(net).cpu(), acc.unwrap_model(head).cpu()
    if best_state is not None:
        _restore(net, head, best_state)
    best_epoch = int(np.argmin([h["val_loss"] for h in history])) + 1 if history else -1
    res = TrainResult(net.eval(), head.eval(), cfg, history, best_epoch, time.perf_counter() - t0, len(train_imgs),
                      len(val_imgs))
    if out is not None:
        save_adapter(out, res.net, res.head, cfg, history=history,
                     extra={"n_train_images": len(train_imgs), "n_val_images": len(val_imgs),
                            "best_epoch": best_epoch, "train_seconds": res.seconds})
    return res


def _save_checkpoint(ckpt: Path, cfg, net, head, opt, history, best, best_state, epoch, bad) -> None:
    from safetensors.torch import save

    tensors = {f"now.{k}": v for k, v in _trainable(net, head).items()}
    tensors |= {f"best.{k}": v for k, v in (best_state or {}).items()}
    opt_meta = []
    for gi, group in enumerate(opt.param_groups):
        for pi, p in enumerate(group["params"]):
            for name, val in opt.state.get(p, {}).items():
                tensors[f"opt.{gi}.{pi}.{name}"] = val.detach().cpu().reshape(val.shape).contiguous()
                opt_meta.append([gi, pi, name])
    atomic_write_bytes(ckpt / "state.safetensors", save(tensors))
    meta = {"config": asdict(cfg), "history": history, "best": best, "epoch": epoch, "bad": bad, "opt": opt_meta}
    atomic_write_bytes(ckpt / "state.json", json.dumps(meta).encode())


def _load_checkpoint(ckpt: Path, cfg, net, head, opt):
    from safetensors.torch import load_file

    meta = json.loads((ckpt / "state.json").read_text())
    if meta["config"] != json.loads(json.dumps(asdict(cfg))):
        raise ConfigError(f"{ckpt} holds a checkpoint of another recipe; delete it or pass the same options "
                          "(or resume=False / --no-resume to start over)")
    t = load_file(str(ckpt / "state.safetensors"))
    _restore(net, head, {k[4:]: v for k, v in t.items() if k.startswith("now.")})
    best_state = {k[5:]: v for k, v in t.items() if k.startswith("best.")} or None
    for gi, pi, name in meta["opt"]:
        p = opt.param_groups[gi]["params"][pi]
        opt.state.setdefault(p, {})[name] = t[f"opt.{gi}.{pi}.{name}"].to(p.device)
    return meta["history"], meta["best"], best_state, meta["epoch"], meta["bad"]


def model_card(cfg: AdaptConfig, history: Sequence[dict], extra: dict[str, Any]) -> str:
    """A README.md card: data, recipe, training curve, metrics when given, limits."""
    rows = "\n".join(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['val_loss']:.4f} |" for h in history)
    metrics = extra.get("metrics")
    mtext = "\n".join(f"- {k}: {v}" for k, v in metrics.items()) if metrics else "- not measured in this run"
    return f"""# vlm-ad adapter

Per-category LoRA adapter for `{cfg.backbone}` made by `vlm-ad adapt` (peft LoRA + cosine/temperature patch head).

## Data
{extra.get('data', 'normal images given to train_adapter')}: {extra.get('n_train_images', '?')} normal images for
training, {extra.get('n_val_images', '?')} held out; anomalies are *synthetic* (vlm_ad.data.make_defect), never real.

## Recipe
LoRA rank {cfg.rank} (alpha {cfg.alpha}) on `{', '.join(cfg.modules)}` of blocks {list(cfg.lora_blocks)}; head reads
{list(cfg.layers)}; {cfg.image_size} px; AdamW lr {cfg.lr}; up to {cfg.epochs} epochs x {cfg.steps_per_epoch} steps x
batch {cfg.batch_size}; early stopping patience {cfg.patience} on the held-out synthetic split; seed {cfg.seed}.
Best epoch: {extra.get('best_epoch', '?')}.

| epoch | train loss | held-out synthetic loss |
| --- | --- | --- |
{rows}

## Metrics
{mtext}

## Limits
Trained on synthetic defects only: real defect types unlike the generator's (scratch, hole, crack, stain,
contamination, missing part, deformation) may be missed. Use it through the `adapted` detector, which fuses the head
with PatchCore retrieval distances. Load with `vlm_ad.adapt.load_adapter(DIR)`; it refuses other backbones.
"""
