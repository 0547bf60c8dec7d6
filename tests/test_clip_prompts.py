# ruff: noqa: F811  (the tiny-CLIP fixtures are imported from test_clip_backbones and requested by name)
"""WinCLIP-style prompt maps, text naming and the trainable prompt + LoRA path, on tiny random CLIPs (offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tests.test_clip_backbones import _load_oc, hf, no_network, oc  # noqa: E402,F401  (fixtures)
from vlm_ad.backbones import create_backbone  # noqa: E402
from vlm_ad.clip_prompts import PromptMapper, add_vision_lora, load_prompt_adapter, load_prompt_set, save_prompt_adapter  # noqa: E402
from vlm_ad.errors import ConfigError  # noqa: E402
from vlm_ad.testing import plant_square, texture_crops  # noqa: E402


def _backbones(hf, oc):
    return {"hf": create_backbone(f"hf-clip:{hf['root']}"), "openclip": _load_oc(oc)}


def test_prompt_set_from_data():
    ps = load_prompt_set()
    normal, anomalous = ps.texts("tile")
    assert len(normal) == len(ps.normal_states) * len(ps.templates) and "a photo of a flawless tile." in normal
    assert any("damaged tile" in t for t in anomalous) and "blowhole" in ps.defects


@pytest.mark.parametrize("kind", ["hf", "openclip"])
def test_prompt_maps_shapes_and_naming(hf, oc, kind):
    bb = _backbones(hf, oc)[kind]
    mapper = PromptMapper(bb, obj="tile")
    imgs = texture_crops(2, 32)
    probs, scores = mapper.anomaly_maps(imgs)
    assert probs.shape == (2, 4, 4) and scores.shape == (2,) and np.all((probs >= 0) & (probs <= 1))
    img, mask = plant_square(imgs[0], frac=0.4)
    name, p = mapper.name_region(img, mask)
    assert name in mapper.prompts.defects and sum(p.values()) == pytest.approx(1.0, abs=1e-4)


def test_prompt_maps_need_a_clip_backbone():
    with pytest.raises(ConfigError, match="need a CLIP backbone"):
        PromptMapper(torch.nn.Linear(2, 2))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hf", "openclip"])
def test_training_step_lowers_the_loss_and_save_load(hf, oc, kind, tmp_path):
    torch.manual_seed(0)
    bb = add_vision_lora(_backbones(hf, oc)[kind], rank=2)
    mapper = PromptMapper(bb, obj="tile", learnable=True)
    img, mask = plant_square(texture_crops(1, 32)[0], frac=0.4)
    x = bb.preprocess([img, texture_crops(1, 32, seed=5)[0]])
    target = torch.zeros(2, 4, 4)
    target[0] = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(mask.astype(np.float32))[None], 4)[0] > 0.3
    params = [p for p in mapper.parameters() if p.requires_grad]
    assert params and any(p is mapper.offset for p in params)
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(mapper(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    save_prompt_adapter(tmp_path / "pa", mapper)
    fresh = PromptMapper(add_vision_lora(_backbones(hf, oc)[kind], rank=2), obj="tile", learnable=True)
    load_prompt_adapter(tmp_path / "pa", fresh)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), mapper(x))
    wrong = PromptMapper(add_vision_lora(_backbones(hf, oc)[kind], rank=3), obj="tile", learnable=True)
    with pytest.raises(ConfigError, match="does not fit this CLIP tower"):
        load_prompt_adapter(tmp_path / "pa", wrong)


def test_winclip_detector_zero_shot_threshold_save_load_and_cli(hf, tmp_path):
    from typer.testing import CliRunner

    from tests.conftest import build_mvtec
    from vlm_ad.cli import app
    from vlm_ad.detectors import create_detector, load_detector

    name = f"hf-clip:{hf['root']}"
    det = create_detector("winclip", backbone=name, obj="tile")
    imgs = texture_crops(3, 32)
    assert det.fit([]) is det and det.threshold_ is None
    maps = det.predict(imgs)
    probs, scores = det.mapper_.anomaly_maps(imgs)
    assert [m.map.shape for m in maps] == [(32, 32)] * 3 and all(m.map.dtype == np.float32 for m in maps)
    np.testing.assert_allclose([m.score for m in maps], scores, rtol=1e-6)  # top-1 % mean of patch probabilities
    det.fit(imgs)  # normal images only set the threshold
    assert det.threshold_ == pytest.approx(np.quantile(scores, 0.99), rel=1e-3)
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    np.testing.assert_allclose([m.score for m in again.predict(imgs)], [m.score for m in maps], rtol=1e-5)
    assert again.threshold_ == det.threshold_
    with pytest.raises(ConfigError, match="needs a CLIP backbone"):
        create_detector("winclip", backbone="efficientnet-lite0")
    root = build_mvtec(tmp_path / "cat")
    r = CliRunner().invoke(app, ["eval", str(root), "--detector", "winclip", "--backbone", name, "--shots", "0",
                                 "-o", "obj=tile", "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    import json

    m = json.loads((tmp_path / "r.json").read_text())
    assert m["detector"] == "winclip" and 0 <= m["image_auroc"] <= 1 and "aupro" in m
