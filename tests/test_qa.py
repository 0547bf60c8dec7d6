"""The multiple-choice QA benchmark: questions from masks and labels, replies read as options, accuracy vs chance."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from vlm_ad.evaluation.qa import evaluate_qa, make_questions, read_choice
from vlm_ad.types import AnomalyMap, Sample

pytest.importorskip("faiss")


def _sample(label: int, box=None, dtype="hole") -> Sample:
    mask = np.zeros((90, 90), bool)
    if box:
        y0, y1, x0, x1 = box
        mask[y0:y1, x0:x1] = True
    return Sample(np.full((90, 90, 3), 128, np.uint8), f"{dtype}/{label}{box}.png", label,
                  dtype if label else "good", mask)


def test_questions_follow_the_mask_and_label():
    qs = {q.kind: q for q in make_questions(_sample(1, (70, 80, 2, 12)), defect_types=("hole", "stain"),
                                            with_types=True)}
    assert qs["defect"].answer == "yes" and qs["where"].answer == "lower left" and len(qs["where"].choices) == 9
    assert qs["size"].answer == "medium" and qs["type"].answer == "hole"  # 100 px of 8100 = 1.2 %
    assert [q.kind for q in make_questions(_sample(0))] == ["defect"]
    assert "type" not in {q.kind for q in make_questions(_sample(1, (0, 5, 0, 5)), defect_types=("hole", "stain"))}


def test_replies_are_read_as_the_option_they_name_first():
    assert read_choice("Yes, anomalous: the score 3 is above the threshold 2.", ("yes", "no")) == "yes"
    assert read_choice("No, normal: the score is not above the threshold.", ("yes", "no")) == "no"
    where = ("upper left", "top centre", "upper right", "centre left", "centre", "centre right", "lower left",
             "bottom centre", "lower right")
    assert read_choice("R1: centre left, small, box (1, 2, 3, 4)", where) == "centre left"
    # two options start at the same word: the longer one is what the reply names ("centre" comes first in the list)
    assert read_choice("R1: centre right, small, box (1, 2, 3, 4)", where) == "centre right"
    assert read_choice("R1: centre, small; R2: centre right", where) == "centre"
    assert read_choice("I can't answer that from this image.", ("small", "medium", "large")) is None
    assert read_choice("a missing part, like example 3", ("crack", "missing_part")) == "missing_part"


class _Always:
    """A reasoner double that answers every question with the same text."""

    name = "always"

    def __init__(self, reply: str) -> None:
        self.reply = reply

    def explain(self, evidence, images=None):
        from vlm_ad.reasoning import create_reasoner

        return create_reasoner("grounded").explain(evidence)

    def answer(self, evidence, question, history=None, images=None):
        return self.reply


def test_accuracy_counts_abstentions_as_wrong_and_reports_chance():
    from vlm_ad.pipeline import Pipeline

    samples = [_sample(0), _sample(0), _sample(1, (10, 30, 10, 30))]
    maps = [AnomalyMap(s.image_id, 1.0, np.zeros((90, 90), np.float32), threshold=2.0) for s in samples]
    m, rows = evaluate_qa(samples, maps, Pipeline(None, _Always("no")))
    assert m["qa_accuracy_defect"] == pytest.approx(2 / 3) and m["qa_chance_defect"] == 0.5
    assert m["qa_accuracy_where"] == 0 and m["qa_abstain_where"] == 1 and m["qa_chance_where"] == pytest.approx(1 / 9)
    assert m["qa_questions"] == len(rows) == 5  # 3 defect + where + size


def test_a_normal_verdict_still_says_where_its_strongest_response_is():
    """"Where is the defect?" on an image below the threshold: the grounded answer says no defect is detected and
    names the location of the map's strongest response (P1), read from the map, never from the mask. "How large?"
    says a missed defect is small (too faint to pass the threshold); the old rule (no core) read P1's area."""
    from vlm_ad.pipeline import Pipeline
    from vlm_ad.reasoning import create_reasoner

    amap = np.zeros((90, 90), np.float32)
    amap[65:80, 65:80] = 1.5  # lower right, 225 px of 8100 = 2.8 %: medium
    sample = _sample(1, (0, 10, 0, 10))  # the mask says upper left: the answer must not follow it
    below = AnomalyMap(sample.image_id, 1.5, amap, threshold=2.0)
    m, rows = evaluate_qa([sample], [below], Pipeline(None, create_reasoner("grounded")))
    by_kind = {r["kind"]: r for r in rows}
    assert by_kind["defect"]["choice"] == "no"
    assert by_kind["where"]["choice"] == "lower right" and by_kind["size"]["choice"] == "small"
    assert "no defect is detected" in by_kind["where"]["reply"] and "P1" in by_kind["where"]["reply"]
    assert "too faint to pass the threshold" in by_kind["size"]["reply"]
    m, rows = evaluate_qa([sample], [below], Pipeline(None, create_reasoner("grounded"), core_level=None))
    assert {r["kind"]: r["choice"] for r in rows}["size"] == "medium"  # P1's area, the rule before cores
    flat = AnomalyMap(sample.image_id, 0.0, np.zeros((90, 90), np.float32), threshold=2.0)
    m, rows = evaluate_qa([sample], [flat], Pipeline(None, create_reasoner("grounded")))
    assert m["qa_abstain_where"] == 1  # a flat map has no strongest response: nothing to say


def test_a_score_above_the_threshold_with_no_pixel_above_it_still_has_a_region():
    """The image score (e.g. a top-k mean of patch scores) can pass the threshold while no pixel of the smoothed,
    full-size map does: the map's strongest response becomes R1, so "where" and "how large" are answered, not
    abstained, and a note says why."""
    from vlm_ad.pipeline import Pipeline
    from vlm_ad.reasoning import create_reasoner

    amap = np.zeros((90, 90), np.float32)
    amap[65:80, 65:80] = 1.5  # lower right; every pixel stays below the threshold 2.0
    sample = _sample(1, (65, 80, 65, 80))
    above = AnomalyMap(sample.image_id, 2.5, amap, threshold=2.0)
    m, rows = evaluate_qa([sample], [above], Pipeline(None, create_reasoner("grounded")))
    by_kind = {r["kind"]: r for r in rows}
    assert by_kind["defect"]["choice"] == "yes"
    assert by_kind["where"]["choice"] == "lower right" and "R1" in by_kind["where"]["reply"]
    assert m["qa_abstain_where"] == 0 and m["qa_abstain_size"] == 0


def test_eval_qa_cli_on_a_synthetic_category(tmp_path):
    from vlm_ad.cli import app
    from vlm_ad.data import generate_dataset

    cat = generate_dataset(tmp_path / "d", sources=("brick",), n_train=3, n_test_good=2, n_test_per_type=3,
                           types=("hole", "stain"), image_size=64, seed=0)["brick"]
    res = CliRunner().invoke(app, ["eval", str(cat), "--shots", "3", "--qa", "--shots-per-type", "1",
                                   "--json", str(tmp_path / "r.json"), "-o", "image_size=64", "-o", "coreset=1.0"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "r.json").read_text())
    for kind, chance in (("defect", 0.5), ("where", 1 / 9), ("size", 1 / 3), ("type", 0.5)):
        assert 0 <= m[f"qa_accuracy_{kind}"] <= 1 and m[f"qa_chance_{kind}"] == pytest.approx(chance)
    assert m["qa_images"] == 8 - 2 and m["qa_reasoner"] == "grounded" and 0 <= m["qa_accuracy"] <= 1


def _blurred_disc(centre: tuple[int, int], radius: float, size: int = 150, sigma: float = 4.0):
    """A defect's disc mask and the map a detector makes of it: the disc blurred (the map spreads a defect)."""
    from scipy import ndimage

    yy, xx = np.mgrid[:size, :size]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    return disc, ndimage.gaussian_filter(disc.astype(np.float32), sigma)


def test_size_comes_from_the_core_of_a_planted_defect_and_where_from_its_region():
    """A planted disc of 3.1 % of the image (medium), blurred as a detector's map is: the region above a low
    threshold covers over 5 % (large, the old answer), its core ~2.3 % (medium, the disc's own size word); the where
    answer is the disc's location word."""
    from vlm_ad.evidence.build import region_core
    from vlm_ad.pipeline import Pipeline
    from vlm_ad.reasoning import create_reasoner
    from vlm_ad.vocabulary import size_word

    disc, amap = _blurred_disc((40, 110), 15.0)
    assert size_word(disc.mean()) == "medium"
    region = amap > 0.1
    assert size_word(region.mean()) == "large"
    core = region_core(amap, region, 0.7)
    assert 0.6 * disc.sum() < core.sum() < disc.sum() and core[40, 110] and not (core & ~disc).any()
    sample = Sample(np.full((150, 150, 3), 128, np.uint8), "hole/000.png", 1, "hole", disc)
    found = AnomalyMap(sample.image_id, float(amap.max()), amap, threshold=0.1)
    for level, expected in ((0.7, "medium"), (None, "large")):
        m, rows = evaluate_qa([sample], [found], Pipeline(None, create_reasoner("grounded"), core_level=level))
        got = {r["kind"]: r for r in rows}
        assert got["defect"]["choice"] == "yes" and got["where"]["choice"] == "upper right"
        assert got["size"]["choice"] == expected, got["size"]["reply"]
        assert ("core" in got["size"]["reply"]) == (level is not None)


def test_region_core_checks_its_level_and_half_maximum_is_the_fwhm():
    from vlm_ad.errors import ConfigError
    from vlm_ad.evidence.build import region_core

    disc, amap = _blurred_disc((75, 75), 20.0)
    half = region_core(amap, amap > 0.05, 0.5, median=0.0)  # the contour at half the peak: the disc's own edge
    assert abs(int(half.sum()) - int(disc.sum())) < 0.1 * disc.sum()
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        region_core(amap, amap > 0.05, 1.5)


def test_defect_share_is_the_effective_area_less_the_spreads():
    """A blur keeps a defect's mass: a defect much wider than the spread reaches full height, so its effective area
    (map over its peak, summed) is its own area; one much smaller than the spread gives the spread's shape, so the
    share less the spread's is about 0; in between the estimate grows with the defect (under-called, a heuristic)."""
    from vlm_ad.evidence.build import defect_share

    sigma = 5.0
    _, spread = _blurred_disc((75, 75), 0.5, sigma=sigma)  # one "patch": the map of a point
    shares, areas = [], []
    for radius in (1.0, 4.0, 8.0, 20.0, 35.0):
        disc, amap = _blurred_disc((75, 75), radius, sigma=sigma)
        region = amap > 1e-3 * amap.max()
        shares.append(defect_share(amap, region, spread, median=0.0))
        areas.append(float(disc.mean()))
        offset = defect_share(amap + 0.2, region, spread, median=0.2)  # measured from the map's median
        assert abs(offset - shares[-1]) < 1e-6
    assert shares[0] < 0.1 * areas[0] + 1e-4  # a point: the spread itself, nothing left
    assert all(abs(s - a) < 0.15 * a for s, a in zip(shares[3:], areas[3:]))  # wide: the defect's own area
    assert shares == sorted(shares) and all(s <= 1.05 * a for s, a in zip(shares, areas))
    assert defect_share(np.zeros((150, 150)), region, spread, median=0.0) == 0.0  # a flat map: nothing to size


def test_size_takes_off_the_maps_own_spread_of_one_patch():
    """A defect far smaller than a patch still fills the map's point spread (the map the detector draws for one
    anomalous patch): its core alone reads "medium", the core less that spread "small"; a large defect stays large.
    (The correction is a heuristic chosen on the dev suite: a medium disc under this much blur is under-called.)"""
    from vlm_ad.evidence import build_evidence
    from vlm_ad.pipeline import Pipeline
    from vlm_ad.reasoning import create_reasoner
    from vlm_ad.vocabulary import size_word

    _, spread = _blurred_disc((75, 75), 3.0, sigma=12.0)
    image = np.full((150, 150, 3), 128, np.uint8)

    class _Spread:  # what the pipeline asks of a detector: its point spread at an image shape
        def point_spread(self, shape):
            return spread

    pipe = Pipeline(None, create_reasoner("grounded"))
    pipe.detector = _Spread()
    for radius, truth in ((3.0, "small"), (30.0, "large")):
        disc, amap = _blurred_disc((40, 100), radius, sigma=12.0)
        assert size_word(disc.mean()) == truth
        found = AnomalyMap("hole/000.png", float(amap.max()), amap, threshold=0.05 * float(amap.max()))
        r = build_evidence(found, image, point_spread=lambda shape: spread).regions[0]
        assert build_evidence(found, image).regions[0].size_pct is None  # no detector spread: not measured
        assert r.size_pct < r.core_pct if truth == "small" else r.size_pct > 5
        assert size_word(r.size_pct / 100) == truth and (truth == "large" or size_word(r.core_pct / 100) == "medium")
        sample = Sample(image, "hole/000.png", 1, "hole", disc)
        m, rows = evaluate_qa([sample], [found], pipe)
        got = {q["kind"]: q for q in rows}["size"]
        assert got["choice"] == truth and "spread of a single patch" in got["reply"], got["reply"]


def test_detector_point_spread_is_one_patch_smoothed_like_its_maps(tmp_path):
    from vlm_ad.detectors import create_detector
    from vlm_ad.testing import texture_crops

    det = create_detector("patchcore", image_size=64, coreset=1.0).fit(texture_crops(2, 64, seed=0))
    spread = det.point_spread((96, 240))
    gh, gw = det.grid_shape((96, 240))
    assert spread.shape == (96, 240) and spread.max() > 0
    y, x = np.unravel_index(int(spread.argmax()), spread.shape)
    assert abs(y - 48) <= 96 / gh and abs(x - 120) <= 240 / gw  # the middle patch
    assert spread[0, 0] < 0.05 * spread.max()  # far from it the map is flat
