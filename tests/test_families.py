"""The survey's other families: generative (ae, vae, feature-ae), attention (cavga, Grad-CAM), input perturbation."""

import numpy as np
import pytest
import torch
from torch import nn

from vlm_ad.detectors import create_detector, load_detector
from vlm_ad.detectors._train import TrainConfig, train
from vlm_ad.detectors.gradcam import grad_cam
from vlm_ad.errors import ConfigError
from vlm_ad.testing import contract_data, plant_square, texture_crops

pytest.importorskip("accelerate", reason="accelerate (vlm-ad[lora]) trains the generative detectors")

SIZE = 96
FAST = {"epochs": 15, "batch_size": 3, "patience": 15}  # a few seconds each on 2 cores
OPTIONS = {
    "ae": {"image_size": 32, **FAST},
    "vae": {"image_size": 32, **FAST},
    "cavga": {"image_size": 48, **FAST},
    "feature-ae": {"image_size": SIZE, **FAST},
    "mahalanobis": {"image_size": SIZE},
    "odin": {"image_size": SIZE},
}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def test_saved_generative_model_keeps_history(tmp_path):
    normal, test, _ = contract_data(SIZE)
    det = create_detector("ae", **OPTIONS["ae"]).fit(normal)
    again = load_detector(det.save(tmp_path / "ae"))
    assert again.history_.train_loss == det.history_.train_loss
    assert again.embedder.config()["backbone"] == "pixels" and again.threshold_ == det.threshold_


def test_tiny_training_run_lowers_the_loss():
    from vlm_ad.detectors.generative import ConvAE, recon_error

    x = torch.from_numpy(np.stack(texture_crops(8, 32))).permute(0, 3, 1, 2).float() / 255
    net = ConvAE(channels=(8, 16, 16), latent=4)
    hist = train(net, x, lambda m, b: recon_error(b, m(b)[0]).mean(), TrainConfig(epochs=8, batch_size=4, lr=3e-3))
    assert hist.train_loss[-1] < 0.5 * hist.train_loss[0], hist.train_loss
    assert hist.val_index and hist.best_epoch >= 0 and hist.stopped


def test_early_stopping_and_time_budget():
    x = torch.rand(6, 3, 16, 16)
    net = nn.Sequential(nn.Conv2d(3, 3, 1))
    frozen = lambda m, b: (m(b) * 0).sum() + 1.0  # noqa: E731 - a loss that never improves
    hist = train(net, x, frozen, TrainConfig(epochs=50, patience=2))
    assert len(hist.train_loss) == 3 and hist.stopped.startswith("early stop")
    with pytest.raises(ConfigError, match="val_fraction"):
        TrainConfig(val_fraction=1.5)


class _RedDetector(nn.Module):
    """A fixed tiny 'anomaly model': conv channels that fire on red-minus-green (or on texture), score = energy."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:2, 0, 1, 1], self.conv.weight[:2, 1, 1, 1] = 1.0, -1.0  # colour channels
            self.conv.weight[2:, 0] = torch.tensor([[0.0, -1, 0], [-1, 4, -1], [0, -1, 0]]) / 8  # edge channels

    def forward(self, x):
        a = torch.relu(self.conv(x))  # (B, 4, H, W)
        return (a[:, :2].pow(2).mean((1, 2, 3)) - 0.1 * a[:, 2:].mean((1, 2, 3)))  # edges lower the score


def test_gradcam_points_to_the_planted_defect():
    image, mask = plant_square(texture_crops(1, 64, seed=3)[0])
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    model = _RedDetector()
    cam = grad_cam(model, x, model.conv, size=(64, 64))[0].numpy()
    assert mask[np.unravel_index(cam.argmax(), cam.shape)]
    assert cam[mask].mean() > 5 * cam[~mask].mean()


def test_detector_gradcam_maps_have_image_resolution():
    normal, test, mask = contract_data(SIZE)
    det = create_detector("mahalanobis", image_size=SIZE).fit(normal)
    att = det.attention_maps(test)
    assert [m.map.shape for m in att] == [(SIZE, SIZE)] * 4
    assert att[-1].map[mask].mean() > att[-1].map[~mask].mean()


def test_perturbation_options():
    normal, test, _ = contract_data(SIZE)
    plain = create_detector("mahalanobis", image_size=SIZE, epsilon=0.0).fit(normal).predict(test)
    moved = create_detector("mahalanobis", image_size=SIZE, epsilon=0.01).fit(normal).predict(test)
    assert not np.allclose([m.score for m in plain], [m.score for m in moved])
    with pytest.raises(ConfigError, match="map one of"):
        create_detector("odin", map="diff")
    with pytest.raises(ConfigError, match="multiple of 8"):
        create_detector("ae", image_size=50)
