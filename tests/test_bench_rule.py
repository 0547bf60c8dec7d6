"""The rule eval/bench_generalization.py applies before a setting may become a default (issue 12): better on most
(dataset, metric) cells, worse nowhere by more than the seed spread, compared on the seeds both rows ran."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from bench_generalization import verdict  # noqa: E402


def _row(name, dataset, seed, img, pix, pro, half="dev"):
    return {"row": name, "dataset": dataset, "seed": seed, "half": half,
            "image_auroc": img, "pixel_auroc": pix, "aupro": pro}


def test_wins_most_cells_and_loses_within_spread_qualifies():
    rows = [_row("old", "a", 0, 0.80, 0.90, 0.70), _row("old", "a", 1, 0.90, 0.92, 0.72),
            _row("new", "a", 0, 0.83, 0.95, 0.80), _row("new", "a", 1, 0.85, 0.96, 0.81)]
    # image AUROC: 0.84 vs 0.85, a loss of 0.01 within the seed spread (0.071); pixel and AUPRO win
    v = verdict(rows, "new", "old", "dev")
    assert "better on 2 of 3 cells, worse on 1" in v and v.endswith("-> qualifies under the rule")


def test_a_loss_beyond_the_spread_disqualifies_however_many_wins():
    rows = [_row("old", d, 0, 0.8, 0.9, 0.7) for d in "abc"] + [_row("new", d, 0, 0.9, 0.95, 0.8) for d in "ab"]
    rows += [_row("new", "c", 0, 0.79, 0.95, 0.8)]  # one seed: no spread, so any loss counts
    v = verdict(rows, "new", "old", "dev")
    assert "better on 8 of 9 cells" in v and "c image -0.010 (spread 0.000)" in v
    assert v.endswith("does not qualify under the rule")


def test_compares_only_the_seeds_both_rows_ran_and_the_half_asked():
    rows = [_row("old", "a", 0, 0.8, 0.9, 0.7), _row("old", "a", 1, 0.2, 0.2, 0.2),
            _row("new", "a", 0, 0.7, 0.8, 0.6), _row("new", "a", 0, 0.99, 0.99, 0.99, half="unseen")]
    # seed 1 of "old" is not compared (new lacks it), so new loses every cell on seed 0
    v = verdict(rows, "new", "old", "dev")
    assert "better on 0 of 3 cells, worse on 3" in v and v.endswith("does not qualify under the rule")
    assert verdict(rows, "new", "old", "unseen") is None  # old has no unseen rows
    assert verdict(rows, "new", "missing", "dev") is None
