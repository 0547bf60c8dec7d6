"""Size estimates of a detected region that hold across detectors: a probe for the grounded reasoner's size answers.

The product's size rule (``size core 0.6 minus blur, small when missed``: the region's core at level 0.6 less the
same core of the detector's map of one anomalous patch; "small" when nothing is above the threshold) was chosen on the
QA dev suite with efficientnet-lite0's 8-shot maps (qa_rules.md). On other maps it answers worse: the ensemble's dev
suite size 0.614 vs 0.693, and on magnetic_tile (held out) full-shot maps answer size 0.394-0.408 vs 0.568 at 8 shots,
because the more defects are detected, the more sizes come from the map. This probe scores size rules on the maps of
two detectors (PatchCore efficientnet-lite0 and the ``ensemble``, 8 shots, seed 0, coreset off), on the 8 synthetic
sets of eval/bench_qa.py's dev suite, each set's anomalous images split in two seeded halves: the rule is chosen on
the ``dev`` half of both detectors, the ``unseen`` half and magnetic_tile are reported, never used to choose.

Rules (each "small" when nothing is above the threshold, as the product; ``level``: share of the way from the map's
median to the region's peak):

    core L minus blur        the product's rule family: core area at level L less the point spread's core at L
    core L minus blur, sqrt  (sqrt(core) - sqrt(spread core))^2: widths subtract, not areas (a sharp-edged defect)
    mass minus blur          the region's mass above the median over its peak (an effective area, no level to pick)
                             less the point spread's (its mass over its peak)
    always small             the baseline every rule must beat

    PYTHONPATH=. python eval/probe_size_rules.py [--out eval/results/probe_size_rules.jsonl]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_qa import TILE, _dev_sets  # noqa: E402
from qa_rules import _found, _spread_core  # noqa: E402

from vlm_ad.data import open_data  # noqa: E402
from vlm_ad.evaluation.run import fit_detector  # noqa: E402
from vlm_ad.evidence.build import effective_area, region_core  # noqa: E402
from vlm_ad.vocabulary import size_word  # noqa: E402

LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9)
DETECTORS = {"effnet": ("patchcore", "efficientnet-lite0"), "ensemble": ("ensemble", None)}


def _features(amap, mask, psf) -> dict | None:
    """Per anomalous image: the true size word, whether detected, and each candidate's area share."""
    found = _found(amap)
    if found is None:
        return None
    reg, detected = found
    m = amap.map
    med = float(np.median(m))
    spread = psf(m.shape)
    out = {"size": size_word(float(mask.mean())), "detected": bool(detected), "true_pct": 100 * float(mask.mean())}
    for f in LEVELS:
        out[f"core {f}"] = float(region_core(m, reg, f, median=med).mean())
        out[f"blur {f}"] = _spread_core(spread, f)
    out["mass"] = effective_area(m, reg, median=med)  # the product's size estimate is mass less blur mass
    out["blur mass"] = effective_area(spread, np.ones(spread.shape, bool), median=0.0)
    return out


def _answers(r: dict) -> dict[str, str]:
    if not r["detected"]:
        return {k: "small" for k in _rule_names()}
    out = {"always small": "small"}
    for f in LEVELS:
        c, b = r[f"core {f}"], r[f"blur {f}"]
        out[f"core {f} minus blur"] = size_word(max(c - b, 0.0))
        out[f"core {f} minus blur, sqrt"] = size_word(max(np.sqrt(c) - np.sqrt(b), 0.0) ** 2)
    out["mass minus blur"] = size_word(max(r["mass"] - r["blur mass"], 0.0))
    return out


def _rule_names() -> list[str]:
    return (["always small"] + [f"core {f} minus blur" for f in LEVELS] + [f"core {f} minus blur, sqrt" for f in LEVELS]
            + ["mass minus blur"])


def collect(out: Path) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = _dev_sets(Path(tmp)) | ({"magnetic_tile": TILE} if TILE.is_dir() else {})
        for name, root in sets.items():
            train, test = open_data(root)
            samples = [test[i] for i in range(len(test))]
            bad = [s for s in samples if s.label == 1 and s.mask is not None and s.mask.any()]
            half = np.random.default_rng(0).permutation(len(bad)) % 2  # seeded halves of the anomalous images
            for dname, (detector, backbone) in DETECTORS.items():
                det, _ = fit_detector(train, detector=detector, backbone=backbone, shots=8, seed=0, coreset=1.0)
                maps = {m.image_id: m for m in det.predict(bad)}
                for s, h in zip(bad, half):
                    f = _features(maps[s.image_id], s.mask, det.point_spread)
                    if f is not None:
                        split = "held out" if name == "magnetic_tile" else ("dev", "unseen")[int(h)]
                        rows.append({"data": name, "detector": dname, "split": split, "image": s.image_id} | f)
                print(name, dname, len(bad), flush=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))


def accuracies(rows: list[dict]) -> list[tuple[str, str, int, int, float, dict[str, float]]]:
    """(detector, split, sets, images, share detected, rule -> size accuracy as the mean over the sets)."""
    out = []
    for dname in DETECTORS:
        for split in ("dev", "unseen", "held out"):
            mine = [r for r in rows if r["detector"] == dname and r["split"] == split]
            if not mine:
                continue
            sets = sorted({r["data"] for r in mine})
            acc = {k: float(np.mean([np.mean([_answers(r)[k] == r["size"] for r in mine if r["data"] == d])
                                     for d in sets])) for k in _rule_names()}
            out.append((dname, split, len(sets), len(mine), float(np.mean([r["detected"] for r in mine])), acc))
    return out


def table(rows: list[dict]) -> list[str]:
    """The probe's section of eval/results/probes.md (eval/render_probes.py)."""
    if not rows:
        return []
    acc = accuracies(rows)
    names = _rule_names()
    out = ["## Size of a detected region: a rule that holds across detectors (built: `mass minus blur`)", "",
           "`PYTHONPATH=. python eval/probe_size_rules.py --out eval/results/probe_size_rules.jsonl`: size-word "
           "accuracy over the anomalous images with a mask (small < 1 %, medium < 5 %, large), each rule answering "
           "\"small\" when the image score is not above the threshold; maps of PatchCore efficientnet-lite0 and of the "
           "`ensemble`, 8 shots, seed 0, coreset off; the QA benchmark's 8 synthetic dev sets, each set's anomalous "
           "images in two seeded halves (`dev`: chosen on, `unseen`: reported only), and magnetic_tile (held out); "
           "cells are means over the sets. See the module docstring for the rules.", "",
           "| detector | split | sets | images | detected | " + " | ".join(names) + " |",
           "|---|---|---|---|---|" + "---|" * len(names)]
    for dname, split, n_sets, n, det, a in acc:
        best = max(a.values())
        out.append(f"| {dname} | {split} | {n_sets} | {n} | {det:.2f} | "
                   + " | ".join(f"**{a[k]:.3f}**" if a[k] == best else f"{a[k]:.3f}" for k in names) + " |")
    dev = [a for _, split, *_, a in acc if split == "dev"]
    mean = {k: float(np.mean([a[k] for a in dev])) for k in names}
    top = sorted(mean, key=mean.get, reverse=True)[:3]
    others = {split: {k: float(np.mean([a[k] for _, sp, *_, a in acc if sp == split])) for k in names}
              for split in ("unseen", "held out")}
    pair = list(dict.fromkeys([top[0], "mass minus blur"]))
    out += ["", "Mean over the two detectors' dev halves: " + ", ".join(f"{k} {mean[k]:.3f}" for k in top)
            + f" (the rule before, core 0.6 minus blur: {mean['core 0.6 minus blur']:.3f}); unseen halves and held "
            "out: " + "; ".join(f"{split} " + ", ".join(f"{k} {v[k]:.3f}" for k in pair) for split, v in others.items())
            + ". Built: `vlm_ad.evidence.build.defect_share` is `mass minus blur` (no level to choose; a blur keeps a "
            "defect's mass, so a wide defect's effective area is its own and a point's is the spread's), chosen when "
            "the `ensemble`'s DINOv2 member saw `area` 280 (dev halves: mass minus blur 0.666, core 0.5 minus blur "
            "0.658, core 0.6 minus blur 0.630); these rows are the rerun after its default became `area` 364, where "
            "the dev halves no longer separate the first two (a difference under one image in 158 per detector) and "
            "the unseen halves and magnetic_tile still favour mass minus blur, so it stays.", ""]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("eval/results/probe_size_rules.jsonl"))
    ap.add_argument("--report", action="store_true", help="only print the accuracies of an earlier run's rows")
    args = ap.parse_args()
    if not args.report:
        collect(args.out)
    print("\n".join(table([json.loads(x) for x in args.out.read_text().splitlines()])))


if __name__ == "__main__":
    main()
