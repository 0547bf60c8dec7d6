"""Real-CLIP zero-shot anomaly maps from prompt ensembles (WinCLIP-style), zero-shot type naming by text, and the
AnomalyCLIP-style trainable option (learnable prompt offsets + LoRA on the vision tower).

For users who have CLIP weights (``openclip:*`` / ``hf-clip:*`` backbones). Prompts are data
(``prompts/winclip.json``: normal and anomalous states x templates, and a defect vocabulary). A patch's anomaly
logit is ``scale * (cos(patch, anomalous) - cos(patch, normal))`` where the two text prototypes are the mean
normalised embeddings of their prompt ensembles and patch tokens of the last block are mapped into the joint space
through the tower's own final norm and projection. On these machines this is only tested on tiny random CLIPs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlm_ad._cache import atomic_write_bytes
from vlm_ad._deps import require
from vlm_ad.errors import ConfigError, DataError

__all__ = ["PROMPTS_FILE", "PromptMapper", "PromptSet", "add_vision_lora", "load_prompt_set"]

PROMPTS_FILE = Path(__file__).resolve().parent / "prompts" / "winclip.json"  # installed with the package


@dataclass
class PromptSet:
    """A prompt ensemble: ``normal_states`` / ``anomalous_states`` x ``templates``; ``defects`` name -> words."""

    normal_states: list[str]
    anomalous_states: list[str]
    templates: list[str]
    defect_template: str = "a photo of a {object} with a {defect}."
    defects: dict[str, str] = field(default_factory=dict)
    version: int = 1

    def __post_init__(self) -> None:
        if not self.normal_states or not self.anomalous_states or not self.templates:
            raise ConfigError("a prompt set needs non-empty normal_states, anomalous_states and templates")

    def texts(self, obj: str) -> tuple[list[str], list[str]]:
        """(normal prompts, anomalous prompts) for an object name."""
        make = lambda states: [t.format(s.format(obj)) for s in states for t in self.templates]  # noqa: E731
        return make(self.normal_states), make(self.anomalous_states)


def load_prompt_set(path: str | Path | None = None) -> PromptSet:
    """Read a prompt-set JSON file (default: ``prompts/winclip.json``)."""
    path = Path(path) if path else PROMPTS_FILE
    if not path.is_file():
        raise DataError(f"prompt file {path} not found; pass a JSON file like prompts/winclip.json")
    raw = json.loads(path.read_text())
    return PromptSet(**{k: v for k, v in raw.items() if k in PromptSet.__dataclass_fields__})


def _kind(backbone: nn.Module) -> str:
    if hasattr(backbone, "model") and hasattr(backbone.model, "visual_projection"):
        return "hf"
    if hasattr(backbone, "model") and hasattr(backbone.model, "visual"):
        return "openclip"
    raise ConfigError(f"prompt maps need a CLIP backbone ('openclip:<arch>' or 'hf-clip:<dir>'), got "
                      f"{getattr(backbone, 'name', type(backbone).__name__)!r}")


def patch_embeddings(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Normalised pixels (B, 3, S, S) -> last-block patch tokens in the joint space, L2-normalised: (B, h, w, D)."""
    b, h, w = x.shape[0], x.shape[-2] // backbone.patch_multiple, x.shape[-1] // backbone.patch_multiple
    if _kind(backbone) == "hf":
        tokens = backbone._vision(x).last_hidden_state[:, 1:]  # (B, h*w, C)
        z = backbone.model.visual_projection(backbone.model.vision_model.post_layernorm(tokens))  # (B, h*w, D)
    else:
        visual = backbone.model.visual
        n = len(visual.transformer.resblocks)
        out = visual.forward_intermediates(x, indices=[n - 1], intermediates_only=True, output_fmt="NLC")
        tokens = out["image_intermediates"][0]  # (B, h*w, C)
        z = visual.ln_post(tokens) @ visual.proj  # (B, h*w, D)
    return F.normalize(z, dim=-1).reshape(b, h, w, -1)


class PromptMapper(nn.Module):
    """Zero-shot (and optionally trained) prompt anomaly maps on a CLIP backbone.

    Args:
        backbone: an ``openclip:*`` or ``hf-clip:*`` backbone.
        prompts: the prompt ensemble (default ``prompts/winclip.json``).
        obj: the object name put into the prompts.
        learnable: add trainable offsets to the two text prototypes (the AnomalyCLIP-style option; starts at zero,
            so an untrained mapper is exactly zero-shot).
    """

    def __init__(self, backbone: nn.Module, prompts: PromptSet | None = None, *, obj: str = "object",
                 learnable: bool = False) -> None:
        super().__init__()
        _kind(backbone)
        self.backbone, self.prompts, self.obj = backbone, prompts or load_prompt_set(), obj
        normal, anomalous = self.prompts.texts(obj)
        with torch.no_grad():
            protos = torch.stack([self._prototype(normal), self._prototype(anomalous)])  # (2, D)
        self.register_buffer("protos", protos)
        self.offset = nn.Parameter(torch.zeros_like(protos), requires_grad=learnable)
        self.scale = float(min(backbone.logit_scale, 100.0))

    def _prototype(self, texts: Sequence[str]) -> torch.Tensor:
        return F.normalize(self.backbone.encode_text(list(texts)).mean(0), dim=-1)  # (D,)

    def prototypes(self) -> torch.Tensor:
        """Current (normal, anomalous) text prototypes: (2, D)."""
        return F.normalize(self.protos + self.offset, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised pixels (B, 3, S, S) -> patch anomaly logits (B, h, w)."""
        cos = patch_embeddings(self.backbone, x) @ self.prototypes().T  # (B, h, w, 2)
        return self.scale * (cos[..., 1] - cos[..., 0])

    @torch.no_grad()
    def anomaly_maps(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB images -> (patch anomaly probabilities (B, h, w), image scores (B,) = top-1% mean)."""
        probs = torch.sigmoid(self(self.backbone.preprocess(images)))  # (B, h, w)
        flat = probs.reshape(len(images), -1)
        k = max(1, int(0.01 * flat.shape[1]))
        return probs.numpy(), flat.topk(k, dim=1).values.mean(1).numpy()

    @torch.no_grad()
    def name_region(self, image: np.ndarray, mask: np.ndarray) -> tuple[str, dict[str, float]]:
        """Zero-shot defect type of a region by text: softmax over the defect vocabulary; (best, probabilities)."""
        if not self.prompts.defects:
            raise ConfigError("the prompt set has no 'defects' vocabulary to name regions with")
        z = patch_embeddings(self.backbone, self.backbone.preprocess([image]))[0]  # (h, w, D)
        m = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
        wgt = F.adaptive_avg_pool2d(m, z.shape[:2])[0, 0]
        wgt = wgt / wgt.sum() if wgt.sum() > 0 else torch.full_like(wgt, 1 / wgt.numel())
        region = F.normalize((z * wgt[..., None]).sum((0, 1)), dim=-1)
        names = list(self.prompts.defects)
        texts = [self.prompts.defect_template.format(object=self.obj, defect=self.prompts.defects[n]) for n in names]
        p = (self.scale * self.backbone.encode_text(texts) @ region).softmax(0)
        return names[int(p.argmax())], {n: float(v) for n, v in zip(names, p)}


def _tower(backbone: nn.Module) -> nn.Module:
    """The vision-tower module that carries LoRA."""
    return backbone.model.vision_model if _kind(backbone) == "hf" else backbone.model.visual.transformer


def add_vision_lora(backbone: nn.Module, *, rank: int = 4, alpha: int = 8) -> nn.Module:
    """Inject LoRA (peft) into the vision tower's attention/MLP linears; only LoRA weights stay trainable."""
    peft = require("peft", "LoRA on the CLIP vision tower")
    tower = _tower(backbone)
    targets = ["q_proj", "v_proj", "fc1", "fc2"] if _kind(backbone) == "hf" else ["c_fc", "c_proj"]
    backbone.requires_grad_(False)
    peft.inject_adapter_in_model(peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets), tower)
    for n, p in tower.named_parameters():
        p.requires_grad_("lora_" in n)
    return backbone


def save_prompt_adapter(directory: str | Path, mapper: PromptMapper) -> Path:
    """Write the LoRA tensors (``adapter_model.safetensors``) and prompt offsets (``prompts.safetensors``)."""
    peft = require("peft", "LoRA on the CLIP vision tower")
    from safetensors.torch import save

    directory = Path(directory)
    tower = _tower(mapper.backbone)
    lora = {k: v.detach().cpu().clone().contiguous() for k, v in peft.get_peft_model_state_dict(tower).items()}
    atomic_write_bytes(directory / "adapter_model.safetensors", save(lora))
    atomic_write_bytes(directory / "prompts.safetensors", save({"offset": mapper.offset.detach().cpu().contiguous()}))
    return directory


def load_prompt_adapter(directory: str | Path, mapper: PromptMapper) -> PromptMapper:
    """Load :func:`save_prompt_adapter` files into a mapper whose backbone already has :func:`add_vision_lora`."""
    peft = require("peft", "LoRA on the CLIP vision tower")
    from safetensors.torch import load_file

    directory = Path(directory)
    tower = _tower(mapper.backbone)
    state = load_file(str(directory / "adapter_model.safetensors"))
    own = peft.get_peft_model_state_dict(tower)
    bad = sorted(k for k in state if k not in own or own[k].shape != state[k].shape)
    if bad or set(own) != set(state):
        raise ConfigError(f"prompt adapter {directory} does not fit this CLIP tower (e.g. {bad[:2]}); "
                          "call add_vision_lora with the same rank on the same model, or re-train")
    peft.set_peft_model_state_dict(tower, state)
    with torch.no_grad():
        mapper.offset.copy_(load_file(str(directory / "prompts.safetensors"))["offset"])
    return mapper
