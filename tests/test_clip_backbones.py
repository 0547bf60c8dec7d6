"""CLIP backbones (open_clip and Hugging Face) on tiny random models built from configs: fully offline."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from vlm_ad.backbones import create_backbone  # noqa: E402
from vlm_ad.backbones.clip import HFClipBackbone, OpenClipBackbone, _resolve_cached_tag  # noqa: E402
from vlm_ad.errors import ConfigError, WeightsNotFoundError  # noqa: E402

ARCH = "vlmad-tiny-vit"
TINY_OPENCLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
PROMPTS = ["a photo of a flawless bottle", "a photo of a damaged bottle", "scratch"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test here must work offline: any socket connect fails loudly."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def _images(n: int, size: int = 40, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# open_clip
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oc(tmp_path_factory):
    """A tiny open_clip CLIP: its config file, the in-memory model, and its weights as .pt and .safetensors."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("openclip")
    config = root / f"{ARCH}.json"
    config.write_text(json.dumps(TINY_OPENCLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained_text=False).eval()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, root / "tiny.pt")
    save_file(state, str(root / "tiny.safetensors"))
    return {"root": root, "config": config, "model": model, "state": state}


def _load_oc(oc, **kw) -> OpenClipBackbone:
    kw.setdefault("pretrained", str(oc["root"] / "tiny.pt"))
    return create_backbone(f"openclip:{ARCH}", model_config=oc["config"], **kw)


def test_openclip_feature_shapes_and_determinism(oc):
    bb = _load_oc(oc, layers=("block0", "block1"))
    assert isinstance(bb, OpenClipBackbone)
    assert bb.available_layers() == ("block0", "block1")
    assert bb.patch_multiple == 8 and bb.image_size == 32
    assert bb.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = bb(x), bb(x)
    assert list(a) == ["block0", "block1"]
    for name in a:
        assert a[name].shape == (2, 64, 4, 4)
        assert torch.equal(a[name], b[name])
    assert not any(p.requires_grad for p in bb.parameters())


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_openclip_loaded_weights_match_saved_model(oc, suffix):
    bb = _load_oc(oc, pretrained=str(oc["root"] / f"tiny{suffix}"), layers=("block1",))
    loaded = bb.model.state_dict()
    assert set(loaded) == set(oc["state"])
    for k, v in oc["state"].items():
        assert torch.equal(loaded[k], v), k
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = oc["model"].visual.forward_intermediates(x, indices=[1], intermediates_only=True)
        got = bb(x)["block1"]
        torch.testing.assert_close(got, ref["image_intermediates"][0], atol=1e-5, rtol=0)
        ref_emb = oc["model"].encode_image(x, normalize=True)
        torch.testing.assert_close(bb.encode_image(x), ref_emb, atol=1e-5, rtol=0)


def test_openclip_encode_text_and_image(oc):
    bb = _load_oc(oc)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        img = bb.encode_image(x)
        txt = bb.encode_text(PROMPTS)
        ref = oc["model"].encode_text(open_clip.get_tokenizer(ARCH)(PROMPTS), normalize=True)
    assert img.shape == (3, 32) and txt.shape == (3, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(txt, ref, atol=1e-5, rtol=0)
    assert bb.encode_text("one prompt").shape == (1, 32)
    assert bb.logit_scale == pytest.approx(float(oc["model"].logit_scale.detach().exp()))


def test_openclip_default_layers_image_size_and_extract(oc):
    bb = _load_oc(oc, image_size=64)
    assert bb.layers == ("block0",)  # a 2-block model: mid and late block coincide
    feats = bb.extract(_images(3), batch_size=2)
    assert feats.input_size == (64, 64)
    assert feats.layers["block0"].shape == (3, 64, 8, 8)
    # the position embedding was interpolated from the 32px checkpoint
    assert bb.model.visual.positional_embedding.shape == (8 * 8 + 1, 64)


def test_openclip_bad_layers_and_sizes(oc):
    with pytest.raises(ConfigError, match="unknown layers"):
        _load_oc(oc, layers=("block7",))
    with pytest.raises(ConfigError, match="multiple of 8"):
        _load_oc(oc, image_size=36)


def test_openclip_random_init_needs_explicit_flag(oc):
    bb = _load_oc(oc, pretrained=None, random_init=True)
    assert bb(torch.zeros(1, 3, 32, 32))["block0"].shape == (1, 64, 4, 4)
    with pytest.raises(WeightsNotFoundError, match="random_init=True") as info:
        _load_oc(oc, pretrained=None)
    assert "pretrained=" in str(info.value)
    with pytest.raises(ConfigError, match="not both"):
        _load_oc(oc, random_init=True)


def test_openclip_missing_weight_file(oc, tmp_path):
    missing = tmp_path / "nope" / "weights.safetensors"
    with pytest.raises(WeightsNotFoundError) as info:
        _load_oc(oc, pretrained=str(missing))
    msg = str(info.value)
    assert str(missing) in msg and "pretrained=" in msg and "network access" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match="no single weight file"):
        _load_oc(oc, pretrained=str(empty))


def test_openclip_weight_folder(oc, tmp_path):
    shutil.copy(oc["root"] / "tiny.safetensors", tmp_path / "open_clip_model.safetensors")
    bb = _load_oc(oc, pretrained=str(tmp_path))
    assert torch.equal(bb.model.visual.proj, oc["state"]["visual.proj"])


def test_openclip_mismatched_weights_are_a_config_error(oc, tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"visual.proj": torch.zeros(3, 3), "logit_scale": torch.zeros(())}, bad)
    with pytest.raises(ConfigError, match="saved from this architecture"):
        _load_oc(oc, pretrained=str(bad))


def test_openclip_uncached_tag_raises_without_network(tmp_path):
    # ViT-B-16 is a real architecture with real tags; an empty cache must fail before building the (large) model
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("openclip:ViT-B-16", pretrained="laion2b_s34b_b88k", cache_dir=tmp_path)
    msg = str(info.value)
    assert "laion2b_s34b_b88k" in msg and "never downloads" in msg and "pretrained='/path/to" in msg
    with pytest.raises(WeightsNotFoundError, match="neither a known tag"):
        create_backbone("openclip:ViT-B-16", pretrained="no_such_tag", cache_dir=tmp_path)


def _fake_hub_file(cache: Path, repo_id: str, filename: str, data: bytes = b"x") -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / filename).write_bytes(data)
    return snap / filename


def test_tag_resolution_reads_only_the_local_caches(tmp_path):
    laion = open_clip.get_pretrained_cfg("ViT-B-16", "laion2b_s34b_b88k")
    assert _resolve_cached_tag("ViT-B-16", "laion2b_s34b_b88k", laion, tmp_path) is None
    repo_id = laion["hf_hub"].rstrip("/")
    path = _fake_hub_file(tmp_path, repo_id, "open_clip_model.safetensors")
    assert _resolve_cached_tag("ViT-B-16", "laion2b_s34b_b88k", laion, tmp_path) == path
    # a tag that also has a URL: a file in the url cache (here cache_dir) is found when the hub cache lacks it
    openai = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    assert _resolve_cached_tag("ViT-B-16", "openai", openai, tmp_path) is None
    url_file = tmp_path / openai["url"].rsplit("/", 1)[-1]
    url_file.write_bytes(b"x")
    assert _resolve_cached_tag("ViT-B-16", "openai", openai, tmp_path) == url_file


def test_openclip_cached_tag_end_to_end(oc, tmp_path, monkeypatch):
    """A (fake) pretrained tag whose file sits in the hub cache loads, and its preprocessing config is used."""
    tag_cfg = {"hf_hub": "vlmad/tiny-clip/", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, ARCH, {"faketag": tag_cfg})
    data = (oc["root"] / "tiny.safetensors").read_bytes()
    _fake_hub_file(tmp_path, "vlmad/tiny-clip", "open_clip_model.safetensors", data)
    bb = create_backbone(f"openclip:{ARCH}", model_config=oc["config"], pretrained="faketag", cache_dir=tmp_path)
    assert bb.mean == (0.5, 0.5, 0.5) and bb.std == (0.25, 0.25, 0.25)
    assert torch.equal(bb.model.text_projection, oc["state"]["text_projection"])
    with pytest.raises(WeightsNotFoundError, match="faketag"):
        create_backbone(f"openclip:{ARCH}", model_config=oc["config"], pretrained="faketag", cache_dir=tmp_path / "x")


def test_openclip_rejects_non_vit_and_unknown_archs(oc, tmp_path):
    with pytest.raises(ConfigError, match="ResNet"):
        create_backbone("openclip:RN50", pretrained="openai")
    with pytest.raises(ConfigError, match="timm"):
        create_backbone("openclip:ViT-B-16-SigLIP", pretrained="webli")
    with pytest.raises(ConfigError, match="Did you mean"):
        create_backbone("openclip:ViT-B-61", pretrained="openai")
    other = tmp_path / "other-name.json"
    other.write_text(json.dumps(TINY_OPENCLIP))
    with pytest.raises(ConfigError, match="openclip:other-name"):
        create_backbone(f"openclip:{ARCH}", model_config=other, random_init=True)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ConfigError, match="vision_cfg"):
        create_backbone("openclip:broken", model_config=broken, random_init=True)


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face transformers
# ----------------------------------------------------------------------------------------------------------------

BOS, EOS = 512, 513


def _write_tiny_clip_tokenizer(directory: Path) -> None:
    """A byte-level CLIP BPE vocabulary with no merges (every byte is a token): tiny, offline, real format."""
    from open_clip.tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": BOS, "<|endoftext|>": EOS})
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfclip")
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": EOS + 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": BOS,
            "eos_token_id": EOS,
            "pad_token_id": EOS,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(root)
    _write_tiny_clip_tokenizer(root)
    return {"root": root, "model": model}


def test_hf_feature_shapes_and_determinism(hf):
    bb = create_backbone(f"hf-clip:{hf['root']}", layers=("block0", "block2"))
    assert isinstance(bb, HFClipBackbone)
    assert bb.available_layers() == ("block0", "block1", "block2")
    assert bb.patch_multiple == 8 and bb.image_size == 32
    assert bb.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = bb(x), bb(x)
    assert list(a) == ["block0", "block2"]
    for name in a:
        assert a[name].shape == (2, 64, 4, 4)
        assert torch.equal(a[name], b[name])


def test_hf_loaded_model_matches_saved(hf):
    bb = create_backbone(f"hf-clip:{hf['root']}", layers=("block1",))
    ref_state = hf["model"].state_dict()
    for k, v in bb.model.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        hidden = hf["model"].vision_model(pixel_values=x, output_hidden_states=True).hidden_states
        ref_map = hidden[2][:, 1:].reshape(2, 4, 4, 64).permute(0, 3, 1, 2)  # output of block 1, CLS dropped
        torch.testing.assert_close(bb(x)["block1"], ref_map, atol=1e-5, rtol=0)
        ref_img = hf["model"].get_image_features(pixel_values=x)
        ref_img = getattr(ref_img, "pooler_output", ref_img)  # transformers 5 returns a model output
        torch.testing.assert_close(
            bb.encode_image(x), torch.nn.functional.normalize(ref_img, dim=-1), atol=1e-5, rtol=0
        )


def test_hf_encode_text_and_image(hf):
    bb = create_backbone(f"hf-clip:{hf['root']}")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        img = bb.encode_image(x)
        txt = bb.encode_text(PROMPTS)
        enc = bb.tokenizer(PROMPTS, padding=True, return_tensors="pt")
        ref = hf["model"].get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        ref = getattr(ref, "pooler_output", ref)
    assert enc["input_ids"][0, 0] == BOS
    assert img.shape == (3, 32) and txt.shape == (3, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(txt, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5, rtol=0)
    assert not torch.allclose(txt[0], txt[1])
    assert bb.logit_scale == pytest.approx(float(hf["model"].logit_scale.detach().exp()))


def test_hf_other_image_size_interpolates(hf):
    bb = create_backbone(f"hf-clip:{hf['root']}", image_size=64)
    assert bb.layers == ("block1",)  # default for 3 blocks
    feats = bb.extract(_images(2, size=50), batch_size=2)
    assert feats.input_size == (64, 64)
    assert feats.layers["block1"].shape == (2, 64, 8, 8)
    with torch.no_grad():
        assert bb.encode_image(torch.zeros(1, 3, 64, 64)).shape == (1, 32)
    with pytest.raises(ConfigError, match="multiple of 8"):
        create_backbone(f"hf-clip:{hf['root']}", image_size=60)


def test_hf_missing_files(hf, tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone(f"hf-clip:{tmp_path / 'absent'}")
    msg = str(info.value)
    assert str(tmp_path / "absent") in msg and "config.json" in msg and "model.safetensors" in msg
    shutil.copy(hf["root"] / "config.json", tmp_path / "config.json")
    with pytest.raises(WeightsNotFoundError, match="no weights"):
        create_backbone(f"hf-clip:{tmp_path}")


def test_hf_without_tokenizer(hf, tmp_path):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(hf["root"] / name, tmp_path / name)
    bb = create_backbone(f"hf-clip:{tmp_path}")
    assert bb(torch.zeros(1, 3, 32, 32))["block1"].shape == (1, 64, 4, 4)  # vision works without a tokenizer
    with pytest.raises(WeightsNotFoundError, match="no tokenizer"):
        bb.encode_text(["a prompt"])


def test_hf_rejects_other_model_types(hf, tmp_path):
    cfg = json.loads((hf["root"] / "config.json").read_text())
    cfg["model_type"] = "siglip"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shutil.copy(hf["root"] / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ConfigError, match="CLIPModel"):
        create_backbone(f"hf-clip:{tmp_path}")
