"""Per-category adaptation: LoRA injection, adapter save/load, mismatch errors, a tiny training run, the detector."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("peft", reason="peft (vlm-ad[lora]) is needed for adapters")
pytest.importorskip("faiss", reason="faiss-cpu (vlm-ad[retrieval]) is needed for the adapted detector")

from vlm_ad.adapt import (
    AdaptConfig,
    CosineHead,
    _loss,
    adapter_backbone,
    head_features,
    inject_lora,
    load_adapter,
    lora_state,
    save_adapter,
    synthetic_batch,
    train_adapter,
)
from vlm_ad.backbones import create_backbone
from vlm_ad.detectors import create_detector
from vlm_ad.errors import ConfigError, DataError
from vlm_ad.testing import texture_crops

SIZE = 56
TINY = dict(image_size=SIZE, epochs=2, steps_per_epoch=2, batch_size=2, lora_blocks=(7,), modules=("qkv", "fc2"))


def _net(cfg):
    return create_backbone("dinov2-s14", layers=cfg.layers, image_size=cfg.image_size)


def test_config_validates():
    with pytest.raises(ConfigError, match="subset of"):
        AdaptConfig(modules=("attn",))
    with pytest.raises(ConfigError, match="would not change the head"):
        AdaptConfig(lora_blocks=(9,), layers=("block5", "block7"))
    with pytest.raises(ConfigError, match="'dinov2-s14' only"):
        AdaptConfig(backbone="efficientnet-lite0")


def test_lora_injection_trains_only_lora_and_starts_as_identity():
    cfg = AdaptConfig(**TINY)
    x = _net(cfg).preprocess(texture_crops(1, SIZE))
    before = _net(cfg)(x)
    net = inject_lora(_net(cfg), cfg)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0] for n in trainable} == {"vit.blocks.7.qkv", "vit.blocks.7.fc2"}
    after = net(x)
    torch.testing.assert_close(after["block7"], before["block7"])  # LoRA B starts at zero


def test_branched_extraction_equals_two_passes_and_shares_the_blocks_below_lora():
    from vlm_ad.adapt import lora_disabled

    cfg = AdaptConfig(**(TINY | {"lora_blocks": (6, 7)}))
    net = inject_lora(_net(cfg), cfg)
    torch.manual_seed(0)
    for name, p in net.named_parameters():
        if "lora_B" in name:  # a trained adapter: LoRA changes blocks 6 and 7
            p.data.normal_(0, 0.05)
    images = texture_crops(3, SIZE, seed=4)
    on = net.extract(images, size=(SIZE, 2 * SIZE)).layers
    with lora_disabled(net):
        off = net.extract(images, size=(SIZE, 2 * SIZE)).layers
    calls = []
    hook = net.vit.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    b_on, b_off = net.extract_branches(images, size=(SIZE, 2 * SIZE), split=6, batch_size=2,
                                       branches=(lambda: torch.no_grad(), lambda: lora_disabled(net)))
    hook.remove()
    assert len(calls) == 2  # block 0 ran once per batch (2 batches), not once per branch
    assert set(b_on.layers) == set(on) == {"block5", "block7"} and b_on.input_size == (SIZE, 2 * SIZE)
    for layer in on:
        torch.testing.assert_close(b_on.layers[layer], on[layer], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b_off.layers[layer], off[layer], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(on["block7"], off["block7"], atol=1e-3)  # the branches do differ


def test_adapter_save_load_round_trip(tmp_path):
    cfg = AdaptConfig(**TINY)
    net = inject_lora(_net(cfg), cfg)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    head = CosineHead(768, cfg.head_dim)
    save_adapter(tmp_path / "ad", net, head, cfg)
    for f in ("adapter_config.json", "adapter_model.safetensors", "head.safetensors", "adapt.json", "README.md"):
        assert (tmp_path / "ad" / f).is_file()
    assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["r"] == cfg.rank
    net2, head2, cfg2 = load_adapter(tmp_path / "ad")
    assert cfg2 == cfg
    for k, v in lora_state(net).items():
        torch.testing.assert_close(lora_state(net2)[k], v)
    x = net.preprocess(texture_crops(1, SIZE))
    with torch.no_grad():
        torch.testing.assert_close(head2(head_features(net2(x))), head(head_features(net(x))))


def test_adapter_backbone_mismatch_is_a_clear_error(tmp_path):
    cfg = AdaptConfig(**TINY)
    save_adapter(tmp_path / "ad", inject_lora(_net(cfg), cfg), CosineHead(768), cfg)
    with pytest.raises(ConfigError, match="trained on backbone 'dinov2-s14', not 'efficientnet-lite0'"):
        load_adapter(tmp_path / "ad", net=create_backbone("efficientnet-lite0", image_size=64))
    # an adapter whose tensors were made for another layout (rank 8 files, rank 4 config)
    other = AdaptConfig(**{**TINY, "rank": 8})
    save_adapter(tmp_path / "r8", inject_lora(_net(other), other), CosineHead(768), other)
    (tmp_path / "r8" / "adapt.json").write_text((tmp_path / "ad" / "adapt.json").read_text())
    with pytest.raises(ConfigError, match="does not fit backbone 'dinov2-s14': shape mismatch"):
        load_adapter(tmp_path / "r8")
    with pytest.raises(DataError, match="is not a vlm-ad adapter"):
        load_adapter(tmp_path)


def test_training_steps_lower_the_loss():
    cfg = AdaptConfig(**TINY, lr=5e-3)
    torch.manual_seed(0)
    net = inject_lora(_net(cfg), cfg)
    head = CosineHead(768, cfg.head_dim)
    x, y = synthetic_batch(texture_crops(4, SIZE, seed=3), np.random.default_rng(0), SIZE // 14, 4)
    params = [p for p in net.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    losses = []
    for _ in range(8):
        loss = _loss(net, head, net.preprocess, x, y, cfg, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_train_adapter_writes_files_and_resumes(tmp_path):
    cfg = AdaptConfig(**TINY)
    imgs = texture_crops(5, SIZE, seed=4)
    seen = []
    res = train_adapter(imgs, cfg, out=tmp_path / "ad", progress=lambda stage, done, total: seen.append(done))
    assert len(res.history) == 2 and seen[-1] == 4
    assert (tmp_path / "ad" / "checkpoint" / "state.json").is_file()
    assert "held-out synthetic loss" in (tmp_path / "ad" / "README.md").read_text()
    # resuming a finished run trains nothing more and gives the same weights
    again = train_adapter(imgs, cfg, out=tmp_path / "ad")
    assert again.history == res.history
    for k, v in lora_state(res.net).items():
        torch.testing.assert_close(lora_state(again.net)[k], v)
    with pytest.raises(ConfigError, match="another recipe"):
        train_adapter(imgs, AdaptConfig(**{**TINY, "epochs": 3}), out=tmp_path / "ad")
    with pytest.raises(DataError, match="at least 2 normal images"):
        train_adapter(imgs[:1], cfg)


def test_adapted_options_are_checked():
    with pytest.raises(ConfigError, match="needs backbone 'dinov2-s14'"):
        create_detector("adapted", backbone="efficientnet-lite0")
    with pytest.raises(ConfigError, match="score in"):
        create_detector("adapted", score="median")


@pytest.mark.slow
def test_cli_adapt_writes_an_adapter(tmp_path):
    from typer.testing import CliRunner

    from tests.conftest import build_mvtec
    from vlm_ad.cli import app

    root = build_mvtec(tmp_path / "cat")
    out = tmp_path / "adapters" / "toy"
    r = CliRunner().invoke(app, ["adapt", str(root), "--out", str(out), "--images", "4", "--epochs", "1", "--steps",
                                 "1", "--batch-size", "2", "--image-size", "56", "--blocks", "7"])
    assert r.exit_code == 0, r.output
    net, head, cfg = load_adapter(out)
    assert cfg.lora_blocks == (7,) and cfg.image_size == 56
    # the adapter then drives 'vlm-ad eval --detector adapted --adapter DIR'; --adapter with another detector fails
    r = CliRunner().invoke(app, ["eval", str(root), "--detector", "adapted", "--backbone", "dinov2-s14",
                                 "--adapter", str(out), "--shots", "2", "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["detector"] == "adapted" and 0.0 <= m["image_auroc"] <= 1.0
    r = CliRunner().invoke(app, ["eval", str(root), "--adapter", str(out), "--shots", "2"])
    assert isinstance(r.exception, ConfigError) and "--detector adapted" in str(r.exception)
    r = CliRunner().invoke(app, ["eval", str(root), "--detector", "adapted", "--adapter", str(tmp_path),
                                 "--shots", "2"])
    assert isinstance(r.exception, ConfigError) and "not an adapter folder" in str(r.exception)


def test_adapted_reads_its_backbone_from_the_adapter(tmp_path):
    cfg = AdaptConfig(**TINY)
    save_adapter(tmp_path / "ad", inject_lora(_net(cfg), cfg), CosineHead(768, cfg.head_dim), cfg)
    assert adapter_backbone(tmp_path / "ad") == "dinov2-s14"
    det = create_detector("adapted", adapter=str(tmp_path / "ad"))  # no backbone given: the adapter's own
    assert det.backbone == "dinov2-s14"
    with pytest.raises(ConfigError, match="was trained on backbone 'dinov2-s14', not 'efficientnet-lite0'"):
        create_detector("adapted", adapter=str(tmp_path / "ad"), backbone="efficientnet-lite0")
    with pytest.raises(DataError, match="is not a vlm-ad adapter"):
        create_detector("adapted", adapter=str(tmp_path))


def test_pick_fuse_keeps_the_head_only_when_it_beats_retrieval_alone_surely():
    from vlm_ad.detectors.adapted import pick_fuse

    def table(conf=1.0, **means):
        return {k.replace("w", "").replace("_", "."): {"mean": v} | ({"confidence": conf} if k != "w1_0" else {})
                for k, v in means.items()}

    assert pick_fuse(table(w0_0=0.70, w0_5=0.90, w1_0=0.85)) == (0.5, "head helps (beat retrieval alone in 100% of "
                                                                 "resamples)", 0.05, 1.0)
    # a gain within the margin is not worth the head's risk on real defects: retrieval alone
    assert pick_fuse(table(w0_0=0.70, w0_5=0.855, w1_0=0.85))[:3] == (1.0, "head does not help", 0.005)
    assert pick_fuse(table(w0_0=0.95, w0_5=0.80, w1_0=0.96))[0] == 1.0
    assert pick_fuse(table(w0_5=0.9, w1_0=0.9))[0] == 1.0  # ties go to retrieval
    # a large gain the bootstrap is not sure of is refused, and the reason says how sure it was
    w, why, gain, conf = pick_fuse(table(conf=0.8, w0_0=0.70, w0_5=0.90, w1_0=0.85))
    assert (w, gain, conf) == (1.0, 0.05, 0.8) and why.startswith("head gain not sure (fuse 0.5") and "80%" in why
    # a table without confidence (no bootstrap) never keeps the head
    assert pick_fuse({"0.5": {"mean": 0.9}, "1.0": {"mean": 0.8}})[0] == 1.0
    # a better mean that costs pixel AUROC is not taken: never worse than retrieval alone on either metric
    t = {"0.5": {"image_auroc": 0.99, "patch_auroc": 0.80, "mean": 0.895, "confidence": 1.0},
         "1.0": {"image_auroc": 0.8, "patch_auroc": 0.9, "mean": 0.85}}
    assert pick_fuse(t)[0] == 1.0


def test_grouped_auroc_matches_sklearn_with_counts_as_weights():
    from sklearn.metrics import roc_auc_score

    from vlm_ad.detectors.fuse_choice import grouped_auroc, pair_counts

    rng = np.random.default_rng(0)
    scores = [np.round(rng.normal(size=int(rng.integers(1, 9))), 1) for _ in range(7)]  # rounded: ties
    labels = [rng.random(len(s)) < 0.3 for s in scores]
    labels[0][:] = True
    labels[1][:] = False
    counts = np.array([[1, 1, 1, 1, 1, 1, 1], [2, 0, 3, 1, 0, 1, 0], [1, 1, 0, 0, 4, 2, 1]])
    got = grouped_auroc(counts, *pair_counts(scores, labels))
    for c, g in zip(counts, got):
        want = roc_auc_score(np.concatenate(labels), np.concatenate(scores),
                             sample_weight=np.concatenate([np.full(len(s), k) for s, k in zip(scores, c)]))
        assert g == pytest.approx(want)
    assert np.isnan(grouped_auroc([[0, 1, 0, 0, 0, 0, 0]], *pair_counts(scores, labels))[0])  # no positives drawn


_RETRIEVAL = np.r_[np.arange(8.0), np.arange(8.0) + 0.5]  # anomaly k beats normals 0..k only: AUROC 36/64


def _validation(head_image: np.ndarray) -> tuple:
    """8 normal + 8 synthetic validation images; retrieval (weight 1) and a head weight (0.5) differ only in the image
    scores, ``head_image`` (16,) being the head weight's."""
    y = np.r_[np.zeros(8, bool), np.ones(8, bool)]
    patches = [np.r_[np.zeros(15), 5.0 if a else 0.0] for a in y]  # the same perfect patch map for both weights
    labels = [np.r_[np.zeros(15, bool), a] for a in y]
    return {1.0: _RETRIEVAL, 0.5: head_image}, {1.0: patches, 0.5: patches}, y, labels


def test_fuse_bootstrap_refuses_a_one_image_gain_and_keeps_a_consistent_one():
    from vlm_ad.detectors.adapted import pick_fuse
    from vlm_ad.detectors.fuse_choice import FUSE_MARGIN, fuse_table

    # one anomaly (the lowest, below 7 normals) jumps to the top: +7/64 image AUROC from one image of 16
    one = _RETRIEVAL.copy()
    one[8] = 100.0
    t = fuse_table(*_validation(one), seed=0)
    assert t["0.5"]["mean"] - t["1.0"]["mean"] > 5 * FUSE_MARGIN  # the old rule (gain > margin) kept the head
    assert 0.5 < t["0.5"]["confidence"] < 0.8  # that image is left out of about (7/8)^8 = 34% of resamples
    w, why, _, conf = pick_fuse(t)
    assert w == 1.0 and why.startswith("head gain not sure") and conf == t["0.5"]["confidence"]
    # every anomaly moves above every normal: the gain holds in (nearly) every resample
    every = np.r_[np.arange(8.0), np.arange(8.0) + 10]
    t = fuse_table(*_validation(every), seed=0)
    assert t["0.5"]["image_auroc"] == 1.0 and t["0.5"]["confidence"] >= 0.99
    assert t["0.5"]["gain_ci90"][0] > 0 and pick_fuse(t)[0] == 0.5
    # deterministic: the same inputs and seed give the same table; another seed resamples differently
    assert fuse_table(*_validation(one), seed=0) == fuse_table(*_validation(one), seed=0)
    assert fuse_table(*_validation(one), seed=1)["0.5"]["confidence"] != fuse_table(*_validation(one), seed=0)[
        "0.5"]["confidence"]


def test_synthetic_validation_marks_exactly_the_changed_pixels():
    from vlm_ad.detectors.adapted import cut_paste, synthetic_validation

    imgs = texture_crops(5, size=64, seed=3)
    syn, masks, src = synthetic_validation(imgs, seed=0, n=4)
    assert len(syn) == len(masks) == 4 and len(set(src)) == 4
    for out, mask, i in zip(syn, masks, src):
        changed = np.any(out != imgs[i], axis=2)
        assert mask.any() and np.array_equal(changed, mask)
    out, mask = cut_paste(imgs[0], imgs[1], np.random.default_rng(0))
    assert 0.005 < mask.mean() < 0.1 and np.array_equal(np.any(out != imgs[0], axis=2), mask)


class _NoiseHead(CosineHead):
    """A head whose logits are noise, whatever the patch."""

    def forward(self, feats):
        return torch.randn(feats.shape[:-1], generator=torch.Generator().manual_seed(feats.shape[0]))


def test_adapted_auto_fusion_falls_back_to_retrieval_when_the_head_is_noise(tmp_path):
    from vlm_ad.detectors import load_detector

    cfg = AdaptConfig(**(TINY | {"image_size": 112}))
    net = inject_lora(_net(cfg), cfg)
    save_adapter(tmp_path / "ad", net, CosineHead(768, cfg.head_dim), cfg)
    det = create_detector("adapted", sigma=1.0).use_trained(net, _NoiseHead(768, cfg.head_dim), cfg)
    with pytest.raises(ConfigError, match="fuse 'auto' or a weight"):
        create_detector("adapted", fuse="half")
    det.fit(texture_crops(8, size=112, seed=1))
    f = det.fusion_
    assert f["chosen"] == "auto" and set(f["validation"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    assert f["n_normal"] == 8 and f["n_synthetic"] == 8
    # a random head does not separate synthetic anomalies; retrieval does, so the detector uses retrieval alone
    assert f["validation"]["0.0"]["mean"] < f["validation"]["1.0"]["mean"]
    assert f["fuse"] == 1.0 and f["reason"] == "head does not help"
    assert f["rule"]["confidence"] == 0.95 and all(0 <= f["validation"][w]["confidence"] <= 1 for w in ("0.0", "0.5"))
    assert "retrieval alone" in det.summary() and "head does not help" in det.summary()
    det.save(tmp_path / "m")
    back = load_detector(tmp_path / "m")
    assert back.fusion_ == f and back.fuse_ == 1.0 and "retrieval alone" in back.summary()
    img = texture_crops(1, size=112, seed=9)[0]
    assert back.predict([img])[0].score == pytest.approx(det.predict([img])[0].score, rel=1e-5)  # head has weight 0
    # retrieval alone on the frozen backbone (LoRA off) is the PatchCore being adapted, at PatchCore's own dinov2-s14
    # input (not the adapter's square 112): the same map up to scale, saved and loaded with that input
    pc = create_detector("patchcore", backbone="dinov2-s14", coreset=1.0, sigma=1.0)
    pc.fit(texture_crops(8, size=112, seed=1))
    assert det.embedder.config() == pc.embedder.config()
    assert back.embedder.geometry == det.embedder.geometry and det.embedder.geometry.mode == "area"
    assert "input area 364 px, short side at least 224 px" in back.summary()  # fit and detect say the input
    a, b = det.predict([img])[0].map, pc.predict([img])[0].map
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999
    # a model saved by the margin-only rule (no bootstrap confidence, no rule) still loads and says its choice
    meta_path = tmp_path / "m" / "detector.json"
    meta = json.loads(meta_path.read_text())
    for key in ("confidence", "rule"):
        del meta["extra"]["fusion"][key]
    for row in meta["extra"]["fusion"]["validation"].values():
        row.pop("confidence", None), row.pop("gain_ci90", None)
    meta_path.write_text(json.dumps(meta))
    margin_only = load_detector(tmp_path / "m")
    assert margin_only.fuse_ == 1.0 and "head does not help" in margin_only.summary()
    # a model saved before fuse="auto" and retrieval= existed: its fixed weight, its bank of adapted features
    del meta["extra"]["fusion"], meta["hyper"]["retrieval"]
    meta["hyper"]["fuse"] = 0.5
    meta_path.write_text(json.dumps(meta))
    old = load_detector(tmp_path / "m")
    assert old.fuse_ == 0.5 and old.hyper["retrieval"] == "adapted" and "fuse=0.5 given" in old.summary()
    given = create_detector("adapted", adapter=str(tmp_path / "ad"), fuse=0.5, score="topk")
    given.fit(texture_crops(3, size=112))
    assert given.fusion_ == {"fuse": 0.5, "chosen": "given"} and "fuse=0.5 given" in given.summary()
    assert given.score_ == "topk" and "top 1% of the map (given)" in given.summary()


def test_adapted_takes_images_of_several_shapes_as_patchcore_does(tmp_path):
    """Fit and test images of two aspect ratios keep their own input shapes (no squash to one): with retrieval alone
    the maps are PatchCore's at its dinov2-s14 default input, image by image, and a saved model does the same."""
    from vlm_ad.detectors import load_detector

    cfg = AdaptConfig(**(TINY | {"image_size": 112}))
    net = inject_lora(_net(cfg), cfg)
    crops = texture_crops(8, size=168, seed=1)
    shots = [c if i % 2 else np.ascontiguousarray(c[:112]) for i, c in enumerate(crops)]  # 168 x 168 and 112 x 168
    det = create_detector("adapted", sigma=1.0, fuse=1.0, score="max").use_trained(
        net, _NoiseHead(768, cfg.head_dim), cfg).fit(shots)
    pc = create_detector("patchcore", backbone="dinov2-s14", coreset=1.0, sigma=1.0).fit(shots)
    tests = [np.ascontiguousarray(c[:112]) if i else c for i, c in enumerate(texture_crops(2, size=168, seed=9))]
    assert len({det.embedder.input_shape(t) for t in tests}) == 2 and det.embedder.geometry.shape is None
    det.save(tmp_path / "m")
    back = load_detector(tmp_path / "m")
    mean, sd = (float(v) for v in det.stats_[:2])
    for a, b, c, t in zip(det.predict(tests), pc.predict(tests), back.predict(tests), tests):
        assert a.map.shape == b.map.shape == t.shape[:2]
        assert np.corrcoef(a.map.ravel(), b.map.ravel())[0, 1] > 0.999
        assert a.score == pytest.approx((b.score - mean) / sd, rel=1e-3) and c.score == pytest.approx(a.score, rel=1e-5)


def _spike(v: float, i: int) -> torch.Tensor:
    """A 16 x 16 grid that is 0 but for one patch at ``v``: a high maximum, a low top-1% mean."""
    g = torch.zeros(16, 16)
    g[3 + i % 8, 5 + i % 7] = v
    return g


def _blob(v: float, i: int) -> torch.Tensor:
    """A 16 x 16 grid with an 8 x 8 square at ``v``: maximum and top-1% mean both ``v``."""
    g = torch.zeros(16, 16)
    g[2 + i % 4 : 10 + i % 4, 3:11] = v
    return g


def _score_validation(normal: list[torch.Tensor], anomalous: list[torch.Tensor]) -> dict:
    return {"grids": {1.0: torch.stack(normal + anomalous)}, "n_normal": len(normal), "n_synthetic": len(anomalous),
            "image_labels": np.r_[np.zeros(len(normal), bool), np.ones(len(anomalous), bool)]}


def test_pick_score_keeps_the_maximum_unless_topk_beats_it_surely():
    from vlm_ad.detectors.fuse_choice import pick_score, score_table

    y = np.r_[np.zeros(8, bool), np.ones(8, bool)]
    normal, anomalous = np.linspace(0, 1, 8), np.linspace(1.1, 2, 8)
    # the top-k mean separates where the maximum does not: kept
    t = score_table({"max": np.r_[anomalous, normal], "topk": np.r_[normal, anomalous]}, y, base="max", seed=0)
    assert t["topk"]["image_auroc"] > 0.9 > 0.1 > t["max"]["image_auroc"] and t["topk"]["confidence"] == 1.0
    assert pick_score(t)[0] == "topk"
    # the top-k mean loses: the maximum (the old behaviour kept top-k whatever the figures)
    t = score_table({"max": np.r_[normal, anomalous], "topk": np.r_[anomalous, normal]}, y, base="max", seed=0)
    assert t["topk"]["loses"] == 1.0 and pick_score(t) == ("max", f"topk loses ({t['topk']['image_auroc']:.3f} vs "
                                                                   f"{t['max']['image_auroc']:.3f})")
    # one image's worth of gain is not sure: the maximum; an exact tie keeps the maximum too
    flip = np.r_[normal, anomalous]
    flip[[7, 8]] = flip[[8, 7]]
    t = score_table({"max": flip, "topk": np.r_[normal, anomalous]}, y, base="max", seed=0)
    assert t["topk"]["image_auroc"] > t["max"]["image_auroc"] and t["topk"]["confidence"] < 0.95
    assert pick_score(t)[0] == "max" and "not sure" in pick_score(t)[1]
    t = score_table({"max": np.r_[normal, anomalous], "topk": np.r_[normal, anomalous] * 2}, y, base="max", seed=0)
    assert t["topk"]["confidence"] == 0.0 and pick_score(t) == ("max", "tie (1.000): max kept")


def test_adapted_chooses_the_image_score_on_validation_and_saves_it(tmp_path):
    from vlm_ad.detectors import load_detector

    cfg = AdaptConfig(**(TINY | {"image_size": 112}))
    net = inject_lora(_net(cfg), cfg)
    det = create_detector("adapted", sigma=1.0, geometry="square", image_size=112).use_trained(
        net, _NoiseHead(768, cfg.head_dim), cfg)  # an input given is the one used
    assert det.hyper["score"] == "auto" and det.embedder.geometry.describe() == "square 112 px"
    det.fit(texture_crops(8, size=112, seed=1))
    s = det.fusion_["image_score"]
    assert s["chosen"] == "auto" and s["fuse"] == det.fuse_ and set(s["validation"]) == {"max", "topk"}
    assert s["score"] == det.score_ and s["rule"] == {"base": "max", "confidence": 0.95, "tie": "max",
                                                      "resamples": 1000}
    assert s["reason"] in det.summary() and "image score:" in det.summary()
    # the choice on constructed validation grids: normal images whose maps hold one hot patch and anomalies with a
    # broad region beat the maximum and not the top-k mean, so top-k is kept ...
    spikes, blobs = [_spike(2.0 + 0.1 * i, i) for i in range(8)], [_blob(1.0 + 0.05 * i, i) for i in range(8)]
    wins = det._choose_score(_score_validation(spikes, blobs), 1.0)
    assert wins["score"] == "topk" and wins["validation"]["topk"]["image_auroc"] == 1.0
    # ... and the other way round the top-k mean loses and the maximum is kept (the old detector always used top-k)
    loses = det._choose_score(_score_validation(blobs, spikes), 1.0)
    assert loses["score"] == "max" and loses["validation"]["max"]["image_auroc"] > 0.9
    assert loses["validation"]["topk"]["image_auroc"] < 0.1
    # the chosen score is the one predict uses, and it survives save / load
    img = texture_crops(1, size=112, seed=9)[0]
    for record in (wins, loses):
        det.fusion_ = det.fusion_ | {"image_score": record}
        m = det.predict([img])[0]
        det.save(tmp_path / record["score"])
        back = load_detector(tmp_path / record["score"])
        assert back.fusion_["image_score"] == record and back.score_ == record["score"]
        assert back.predict([img])[0].score == pytest.approx(m.score, rel=1e-5)
    assert det.score_ == "max"
    # with the maximum and retrieval alone the image score is the frozen PatchCore's, up to its standardisation
    pc = create_detector("patchcore", backbone="dinov2-s14", image_size=112, geometry="square", coreset=1.0,
                         sigma=1.0)  # the square input the adapter sees
    pc.fit(texture_crops(8, size=112, seed=1))
    mean, sd = (float(v) for v in det.stats_[:2])
    assert det.predict([img])[0].score == pytest.approx((pc.predict([img])[0].score - mean) / sd, rel=1e-3)
    # a model saved before the choice existed (no record) keeps its given score; an explicit score is honoured
    meta_path = tmp_path / "max" / "detector.json"
    meta = json.loads(meta_path.read_text())
    del meta["extra"]["fusion"]["image_score"]
    meta["hyper"]["score"] = "topk"
    meta_path.write_text(json.dumps(meta))
    old = load_detector(tmp_path / "max")
    assert old.score_ == "topk" and "image score: mean of the top 1% of the map (given)" in old.summary()
    assert old.predict([img])[0].score != pytest.approx(back.predict([img])[0].score, rel=1e-3)
    given = create_detector("adapted", sigma=1.0, score="max", geometry="square", image_size=112).use_trained(
        net, _NoiseHead(768, cfg.head_dim), cfg)
    given.fit(texture_crops(8, size=112, seed=1))
    assert "image_score" not in given.fusion_ and given.score_ == "max" and "map maximum (given)" in given.summary()
