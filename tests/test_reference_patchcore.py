"""The reference PatchCore that eval/bench_generalization.py holds vlm-ad's rows against (issue 12): its geometry
keeps the aspect ratio at a fixed long side, and on a planted defect it finds the defect."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from reference_patchcore import ReferencePatchCore  # noqa: E402


def _texture(rng: np.random.Generator, shape=(96, 240)) -> np.ndarray:
    base = np.kron(rng.integers(90, 140, (shape[0] // 8, shape[1] // 8)), np.ones((8, 8)))
    img = base + rng.normal(0, 4, shape)
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def test_long_side_keeps_the_aspect_ratio_at_stride_multiples():
    ref = ReferencePatchCore("efficientnet-lite0", long_side=256)
    assert ref.input_shape(500, 1250) == (96, 256)  # 102.4 -> the nearest multiple of 16
    assert ref.input_shape(1250, 500) == (256, 96)
    assert ref.input_shape(600, 800) == (192, 256)
    assert ref.input_shape(10, 4000) == (16, 256)  # never below one stride


def test_planted_defect_on_an_elongated_image_is_found():
    rng = np.random.default_rng(0)
    ref = ReferencePatchCore("efficientnet-lite0", long_side=256, coreset=0.5).fit([_texture(rng) for _ in range(4)])
    normal, defect = _texture(rng), _texture(rng)
    defect[40:56, 150:170] = 250  # a bright blob, 16 x 20 px of a 96 x 240 image
    (s_normal, m_normal), (s_defect, m_defect) = ref.predict([normal, defect])
    assert m_defect.shape == defect.shape[:2] and m_normal.shape == normal.shape[:2]
    assert s_defect > s_normal
    y, x = np.unravel_index(np.argmax(m_defect), m_defect.shape)
    assert 32 <= y <= 64 and 140 <= x <= 180
