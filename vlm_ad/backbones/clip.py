"""CLIP vision towers as backbones: open_clip models and Hugging Face ``CLIPModel`` directories.

Both return the patch tokens of chosen transformer blocks as ``(B, C, h, w)`` maps (layer ``block{i}`` is the
output of block ``i``, 0-based, before the final norm) and also expose the joint image/text embedding space
(:meth:`encode_image`, :meth:`encode_text`, :attr:`logit_scale`) for zero-shot prompts.

Nothing here downloads. Weights come from a local file or directory, or (open_clip tags only) from a file that
is already in the local Hugging Face hub cache / ``~/.cache/clip``.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from vlm_ad._deps import require
from vlm_ad.backbones.base import Backbone
from vlm_ad.errors import ConfigError, WeightsNotFoundError

__all__ = ["CLIP_MEAN", "CLIP_STD", "HFClipBackbone", "OpenClipBackbone"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# open_clip's names for a full-model checkpoint on the hub (the safetensors one is preferred)
_OPENCLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _default_layers(n_blocks: int) -> tuple[str, ...]:
    """A mid and a late block (e.g. blocks 5 and 8 of 12), the usual choice for patch-level anomaly maps."""
    picks = sorted({(n_blocks - 1) // 2, (3 * (n_blocks - 1)) // 4})
    return tuple(f"block{i}" for i in picks)


def _block_index(layer: str) -> int:
    return int(layer[len("block") :])


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Make huggingface_hub (and transformers, which asks it) refuse network access for the duration."""
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub client at all: nothing can go online through it
        yield
        return
    old_const, old_env = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------------------------------
# open_clip
# ----------------------------------------------------------------------------------------------------------------


def _register_model_config(open_clip: Any, arch: str, model_config: str | os.PathLike) -> None:
    path = Path(model_config).expanduser()
    if not path.exists():
        raise ConfigError(f"model_config {str(path)!r} does not exist; pass an open_clip model-config JSON file")
    if path.is_file():
        if path.stem != arch:
            raise ConfigError(
                f"model_config {path.name!r} registers the architecture {path.stem!r}, but 'openclip:{arch}' was "
                f"asked for; use 'openclip:{path.stem}' (open_clip names a config after its file)"
            )
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model_config {str(path)!r} is not readable JSON: {exc}") from exc
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
        if missing:
            raise ConfigError(
                f"model_config {str(path)!r} lacks the keys {missing}; an open_clip model config needs "
                "'embed_dim', 'vision_cfg' and 'text_cfg'"
            )
    try:  # avoid growing open_clip's search path when the same config is registered again
        known = list(open_clip.factory._MODEL_CONFIG_PATHS)
    except AttributeError:
        known = []
    if path not in known:
        open_clip.add_model_config(path)


def _check_vit_config(arch: str, cfg: dict[str, Any]) -> None:
    vision = cfg.get("vision_cfg", {})
    if "timm_model_name" in vision:
        raise ConfigError(
            f"openclip:{arch} has a timm vision tower ({vision['timm_model_name']}); only open_clip's own "
            "VisionTransformer towers are supported (e.g. ViT-B-16, ViT-L-14)"
        )
    if isinstance(vision.get("layers"), (list, tuple)):
        raise ConfigError(
            f"openclip:{arch} has a ResNet vision tower; only ViT towers are supported (e.g. ViT-B-16, ViT-L-14)"
        )


def _how_to_provide(arch: str, tags: Sequence[str], tag: str | None = None) -> str:
    example_tag = tag or (tags[0] if tags else "<tag>")
    return (
        "Provide weights in one of these ways: (1) pass pretrained='/path/to/open_clip_model.safetensors' "
        "(or a .bin/.pt state dict, or a folder holding one); (2) once, on a machine with network access, run "
        f"`python -c \"import open_clip; open_clip.create_model('{arch}', pretrained='{example_tag}')\"` so the "
        "file lands in the Hugging Face hub cache (~/.cache/huggingface/hub, or $HF_HUB_CACHE), then copy that "
        "cache here and pass the tag again"
        + (f"; known tags for {arch}: {', '.join(tags)}" if tags else "")
        + ". For tests only, random_init=True builds the model with random weights."
    )


def _find_weights_in_dir(directory: Path) -> Path | None:
    found = [p for p in sorted(directory.iterdir()) if p.is_file() and p.suffix in _WEIGHT_SUFFIXES]
    for name in (*_OPENCLIP_HUB_FILES, "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin"):
        for p in found:
            if p.name == name:
                return p
    return found[0] if len(found) == 1 else None


def _resolve_local_file(arch: str, pretrained: str, tags: Sequence[str]) -> Path:
    path = Path(pretrained).expanduser()
    if path.is_dir():
        found = _find_weights_in_dir(path)
        if found is None:
            raise WeightsNotFoundError(
                f"no single weight file ({', '.join(_WEIGHT_SUFFIXES)}) found in the folder {str(path)!r} for "
                f"openclip:{arch}. " + _how_to_provide(arch, tags)
            )
        return found
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weight file {str(path)!r} for openclip:{arch} does not exist. " + _how_to_provide(arch, tags)
        )
    return path


def _resolve_cached_tag(arch: str, tag: str, cfg: dict[str, Any], cache_dir: str | os.PathLike | None) -> Path | None:
    """The local file for a known pretrained tag, found without any network access, or None."""
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            # 'org/repo/' means open_clip's default file names; 'org/repo/file.bin' names the file
            repo_id, filename = (hub[:-1], "") if hub.endswith("/") else os.path.split(hub)
            candidates: list[str] = []
            if filename:
                if filename.endswith((".bin", ".pth")):
                    candidates.append(filename[:-4] + ".safetensors")
                candidates.append(filename)
            else:
                candidates.extend(_OPENCLIP_HUB_FILES)
            for name in candidates:
                hit = try_to_load_from_cache(repo_id, name, cache_dir=None if cache_dir is None else str(cache_dir))
                if isinstance(hit, str) and os.path.isfile(hit):
                    return Path(hit)
    url = cfg.get("url", "")
    if url:
        root = Path(cache_dir).expanduser() if cache_dir is not None else Path("~/.cache/clip").expanduser()
        target = root / os.path.basename(url)
        if target.is_file():
            return target
    if cfg.get("file") and Path(cfg["file"]).is_file():
        return Path(cfg["file"])
    return None


class OpenClipBackbone(Backbone):
    """An open_clip ViT CLIP: patch tokens of chosen blocks, plus the image/text embedding space.

    Build it with :meth:`load` (or ``create_backbone("openclip:ViT-B-16", pretrained=...)``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        arch: str,
        image_size: int | None = None,
        layers: Sequence[str] | None = None,
        tokenizer: Any = None,
    ) -> None:
        open_clip = require("open_clip", "open_clip CLIP backbones")
        visual = getattr(model, "visual", None)
        if not isinstance(visual, open_clip.transformer.VisionTransformer):
            raise ConfigError(
                f"openclip:{arch}: the vision tower is {type(visual).__name__}, not a ViT; only open_clip "
                "VisionTransformer towers are supported"
            )
        self.name = f"openclip:{arch}"
        self.arch = arch
        pre = getattr(visual, "preprocess_cfg", None) or {}
        self.mean = tuple(float(v) for v in pre.get("mean", CLIP_MEAN))  # type: ignore[assignment]
        self.std = tuple(float(v) for v in pre.get("std", CLIP_STD))  # type: ignore[assignment]
        ph, pw = visual.patch_size if isinstance(visual.patch_size, tuple) else (visual.patch_size,) * 2
        if ph != pw:
            raise ConfigError(f"{self.name}: non-square patches {ph}x{pw} are not supported")
        self.patch_multiple = int(ph)
        self._n_blocks = len(visual.transformer.resblocks)
        native = visual.image_size[0] if isinstance(visual.image_size, tuple) else int(visual.image_size)
        super().__init__(
            image_size=int(image_size or native),
            layers=tuple(layers) if layers is not None else _default_layers(self._n_blocks),
        )
        if self.image_size != native:
            raise ConfigError(
                f"{self.name}: the model was built for {native}px inputs but image_size={self.image_size}; "
                "pass image_size to OpenClipBackbone.load, which resizes the position embedding"
            )
        self.model = _freeze(model)
        self._tokenizer = tokenizer
        self._indices = sorted({_block_index(layer) for layer in self.layers})

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        arch: str,
        *,
        pretrained: str | os.PathLike | None = None,
        image_size: int | None = None,
        layers: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        model_config: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        random_init: bool = False,
    ) -> OpenClipBackbone:
        """Build an open_clip ViT CLIP without touching the network.

        Args:
            arch: open_clip architecture name, e.g. ``"ViT-B-16"`` (see ``open_clip.list_models()``).
            pretrained: a local weight file (``.safetensors``/``.bin``/``.pt``) or a folder holding one, or a
                pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``, ...) whose file is already in the local
                hub cache. Required unless ``random_init=True``.
            image_size: input size in pixels (default: the model's own); a different size interpolates the
                position embedding of the loaded weights.
            layers: blocks to return, ``"block{i}"``; default a mid and a late block.
            device: where to put the model.
            model_config: an open_clip model-config JSON file (or a folder of them) to register first; with a
                file, ``arch`` must be its stem.
            cache_dir: where to look for tag files instead of the default hub cache / ``~/.cache/clip``.
            random_init: build with random weights (tests only); excludes ``pretrained``.
        """
        open_clip = require("open_clip", "open_clip CLIP backbones")
        if model_config is not None:
            _register_model_config(open_clip, arch, model_config)
        cfg = open_clip.get_model_config(arch)
        if cfg is None:
            known = open_clip.list_models()
            close = difflib.get_close_matches(arch, known, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown open_clip architecture {arch!r}.{hint} See open_clip.list_models(), or register your own "
                "with model_config='/path/to/<arch>.json'"
            )
        _check_vit_config(arch, cfg)
        tags = list(open_clip.list_pretrained_tags_by_model(arch))

        kwargs: dict[str, Any] = {}
        if random_init:
            if pretrained is not None:
                raise ConfigError("pass either pretrained=... or random_init=True, not both")
            weights = None
        elif pretrained is None:
            raise WeightsNotFoundError(f"openclip:{arch} needs pretrained weights. " + _how_to_provide(arch, tags))
        else:
            spec = str(pretrained)
            tag_cfg = open_clip.get_pretrained_cfg(arch, spec)
            if tag_cfg:
                weights = _resolve_cached_tag(arch, spec, tag_cfg, cache_dir)
                if weights is None:
                    where = f"in {cache_dir}" if cache_dir is not None else "in the local hub cache or ~/.cache/clip"
                    raise WeightsNotFoundError(
                        f"the weights for openclip:{arch} pretrained={spec!r} are not {where}, and vlm-ad never "
                        "downloads. " + _how_to_provide(arch, tags, spec)
                    )
                kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
                pre = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
                if pre:
                    kwargs["force_preprocess_cfg"] = pre
            elif os.sep in spec or "/" in spec or spec.endswith(_WEIGHT_SUFFIXES) or Path(spec).expanduser().exists():
                weights = _resolve_local_file(arch, spec, tags)
            else:
                raise WeightsNotFoundError(
                    f"pretrained={spec!r} is neither a known tag for openclip:{arch} nor an existing file. "
                    + _how_to_provide(arch, tags)
                )
        if image_size is not None:
            kwargs["force_image_size"] = int(image_size)

        with _hub_offline():
            try:
                model = open_clip.create_model(
                    arch,
                    pretrained=None if weights is None else str(weights),
                    device=device,
                    pretrained_image=False,
                    pretrained_text=False,
                    **kwargs,
                )
            except RuntimeError as exc:
                raise ConfigError(
                    f"could not build openclip:{arch} from {str(weights) if weights else 'random init'!r}: {exc}. "
                    "Check that the weight file was saved from this architecture"
                ) from exc
        return cls(model, arch=arch, image_size=image_size, layers=layers)

    # -- features ----------------------------------------------------------------------------------------------

    def available_layers(self) -> tuple[str, ...]:
        return tuple(f"block{i}" for i in range(self._n_blocks))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        visual = self.model.visual
        if hasattr(visual, "forward_intermediates"):
            out = visual.forward_intermediates(
                x, indices=self._indices, stop_early=True, intermediates_only=True, output_fmt="NCHW"
            )
            maps = dict(zip(self._indices, out["image_intermediates"], strict=True))
        else:  # older open_clip: hook the blocks
            maps = self._forward_hooks(x)
        return {layer: maps[_block_index(layer)] for layer in self.layers}

    def _forward_hooks(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        visual = self.model.visual
        batch_first = getattr(visual.transformer, "batch_first", True)
        grabbed: dict[int, torch.Tensor] = {}
        handles = []
        for i in self._indices:

            def hook(_m: nn.Module, _inp: Any, out: torch.Tensor, i: int = i) -> None:
                grabbed[i] = out if batch_first else out.transpose(0, 1)

            handles.append(visual.transformer.resblocks[i].register_forward_hook(hook))
        try:
            visual(x)
        finally:
            for h in handles:
                h.remove()
        b, h, w = x.shape[0], x.shape[-2] // self.patch_multiple, x.shape[-1] // self.patch_multiple
        return {i: t[:, 1:].reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous() for i, t in grabbed.items()}

    # -- joint embedding space ---------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            open_clip = require("open_clip", "open_clip CLIP backbones")
            with _hub_offline():
                try:
                    self._tokenizer = open_clip.get_tokenizer(self.arch)
                except Exception as exc:  # HF tokenizers that are not cached locally
                    raise WeightsNotFoundError(
                        f"{self.name}: its tokenizer could not be loaded offline ({exc}); vlm-ad never downloads. "
                        "Fetch the tokenizer once with network access into the Hugging Face cache"
                    ) from exc
        return self._tokenizer

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, S, S)`` pixels -> L2-normalised image embeddings ``(B, D)``."""
        return self.model.encode_image(x.to(self.device), normalize=True)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Prompts -> L2-normalised text embeddings ``(B, D)``."""
        if isinstance(texts, str):
            texts = [texts]
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens, normalize=True)

    @property
    def logit_scale(self) -> float:
        """The learned temperature as a multiplier (``exp`` of the stored log-scale)."""
        return float(self.model.logit_scale.detach().exp().item())


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face transformers
# ----------------------------------------------------------------------------------------------------------------

_HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def _hf_expected(directory: Path) -> str:
    return (
        f"expected a folder written by CLIPModel.save_pretrained (config.json + model.safetensors, plus "
        f"tokenizer.json or vocab.json + merges.txt for encode_text) at {str(directory)!r}. Download it once on a "
        "machine with network access, e.g. `huggingface-cli download openai/clip-vit-base-patch16 --local-dir "
        "<dir>`, and pass that folder: create_backbone('hf-clip:<dir>')"
    )


class HFClipBackbone(Backbone):
    """A transformers ``CLIPModel`` loaded from a local folder: patch tokens of chosen blocks, plus the
    image/text embedding space. Build it with :meth:`load` (or ``create_backbone("hf-clip:/path/to/dir")``)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        directory: str | os.PathLike = "",
        image_size: int | None = None,
        layers: Sequence[str] | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        vcfg = model.config.vision_config
        self.name = f"hf-clip:{directory}"
        self.directory = Path(directory) if directory else None
        self.mean = tuple(float(v) for v in mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in std)  # type: ignore[assignment]
        self.patch_multiple = int(vcfg.patch_size)
        self._n_blocks = int(vcfg.num_hidden_layers)
        self._native = int(vcfg.image_size)
        super().__init__(
            image_size=int(image_size or self._native),
            layers=tuple(layers) if layers is not None else _default_layers(self._n_blocks),
        )
        self.model = _freeze(model)
        self._interpolate = self.image_size != self._native
        if self._interpolate:
            import inspect

            try:
                params = inspect.signature(model.vision_model.forward).parameters
            except (TypeError, ValueError):
                params = {}
            if "interpolate_pos_encoding" not in params:
                raise ConfigError(
                    f"{self.name}: this transformers version cannot interpolate CLIP position embeddings; "
                    f"image_size must be {self._native}"
                )
        self._tokenizer: Any = None
        self._indices = sorted({_block_index(layer) for layer in self.layers})

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        image_size: int | None = None,
        layers: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
    ) -> HFClipBackbone:
        """Load ``CLIPModel`` from a local folder (never from the hub); weights are cast to float32.

        Args:
            directory: folder with ``config.json`` and ``model.safetensors`` (``pytorch_model.bin`` also works).
            image_size: input size in pixels (default: the config's); another size interpolates the position
                embedding on the fly.
            layers: blocks to return, ``"block{i}"``; default a mid and a late block.
            device: where to put the model.
        """
        transformers = require("transformers", "Hugging Face CLIP backbones")
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise WeightsNotFoundError(f"no folder {str(path)!r} for hf-clip; " + _hf_expected(path))
        if not (path / "config.json").is_file():
            raise WeightsNotFoundError(f"config.json is missing in {str(path)!r}; " + _hf_expected(path))
        if not any((path / f).is_file() for f in _HF_WEIGHT_FILES):
            raise WeightsNotFoundError(
                f"no weights ({', '.join(_HF_WEIGHT_FILES)}) in {str(path)!r}; " + _hf_expected(path)
            )
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{str(path / 'config.json')!r} is not readable JSON: {exc}") from exc
        if config.get("model_type") != "clip":
            raise ConfigError(
                f"{str(path)!r} holds a {config.get('model_type')!r} model; hf-clip needs a full CLIPModel "
                "(model_type 'clip', with both towers)"
            )
        with _hub_offline():
            try:
                model, info = transformers.CLIPModel.from_pretrained(  # safetensors only: never unpickle a folder
                    str(path), local_files_only=True, output_loading_info=True, use_safetensors=True
                )
            except OSError as exc:
                raise WeightsNotFoundError(
                    f"could not load CLIPModel from {str(path)!r} (vlm-ad reads model.safetensors only, never a "
                    f"pickled pytorch_model.bin): {exc}; " + _hf_expected(path)
                ) from exc
        missing = list(info.get("missing_keys", []) or [])
        if missing:
            raise ConfigError(
                f"the weights in {str(path)!r} do not fill the CLIPModel its config.json describes; missing "
                f"{len(missing)} tensors, e.g. {missing[:3]}"
            )
        model = model.float().to(device)
        mean, std = CLIP_MEAN, CLIP_STD
        pre_path = path / "preprocessor_config.json"
        if pre_path.is_file():
            with contextlib.suppress(OSError, ValueError):
                pre = json.loads(pre_path.read_text(encoding="utf-8"))
                mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
        return cls(model, directory=path, image_size=image_size, layers=layers, mean=mean, std=std)

    # -- features ----------------------------------------------------------------------------------------------

    def available_layers(self) -> tuple[str, ...]:
        return tuple(f"block{i}" for i in range(self._n_blocks))

    def _vision(self, x: torch.Tensor, **kw: Any) -> Any:
        if self._interpolate:
            kw["interpolate_pos_encoding"] = True
        return self.model.vision_model(pixel_values=x, return_dict=True, **kw)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self._vision(x, output_hidden_states=True)
        hidden = out.hidden_states  # embeddings, then the output of every block
        b, h, w = x.shape[0], x.shape[-2] // self.patch_multiple, x.shape[-1] // self.patch_multiple
        feats = {}
        for layer in self.layers:
            tokens = hidden[_block_index(layer) + 1][:, 1:]  # drop CLS
            feats[layer] = tokens.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        return feats

    # -- joint embedding space ---------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            transformers = require("transformers", "Hugging Face CLIP backbones")
            d = self.directory
            if d is None or not any((d / f).is_file() for f in _HF_TOKENIZER_FILES):
                raise WeightsNotFoundError(
                    f"{self.name}: no tokenizer saved next to the model (expected tokenizer.json, or vocab.json + "
                    "merges.txt); save one with CLIPTokenizer.save_pretrained(<dir>) or download the full model "
                    "folder, which includes it"
                )
            with _hub_offline():
                try:
                    self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)
                except (OSError, ValueError):
                    self._tokenizer = transformers.CLIPTokenizer.from_pretrained(str(d), local_files_only=True)
        return self._tokenizer

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, S, S)`` pixels -> L2-normalised image embeddings ``(B, D)``."""
        pooled = self._vision(x.to(self.device)).pooler_output
        return nn.functional.normalize(self.model.visual_projection(pooled), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Prompts -> L2-normalised text embeddings ``(B, D)``."""
        if isinstance(texts, str):
            texts = [texts]
        max_len = int(self.model.config.text_config.max_position_embeddings)
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        out = self.model.text_model(
            input_ids=enc["input_ids"].to(self.device),
            attention_mask=enc["attention_mask"].to(self.device),
            return_dict=True,
        )
        return nn.functional.normalize(self.model.text_projection(out.pooler_output), dim=-1)

    @property
    def logit_scale(self) -> float:
        """The learned temperature as a multiplier (``exp`` of the stored log-scale)."""
        return float(self.model.logit_scale.detach().exp().item())
