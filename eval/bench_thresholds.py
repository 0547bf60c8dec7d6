"""Few-shot thresholds that fire: verdict accuracy of threshold rules set on normal images only.

Every rule sees only the leave-image-out scores of the normal shots (``PatchCore.calibration_scores_``); none sees a
test label. For each set of the dev suite of ``eval/bench_generalization.py`` (synthetic square and elongated, the
magnetic_tile and textile subsamples), 4 and 8 shots, seeds 0-2: PatchCore (efficientnet-lite0, default geometry,
coreset off) is fitted, the test images scored, and each rule's verdicts compared with the labels: balanced accuracy
(mean of the share of defects flagged and the share of normal images passed) on the dev half and the unseen half.

    PYTHONPATH=. python eval/bench_thresholds.py        -> eval/results/thresholds.md / .jsonl

The check after the choice, at the product's defaults (``coreset`` 0.1) on every set of the suite, both backbones
(the nine sets added after the choice are data it was not chosen on):

    PYTHONPATH=. python eval/bench_thresholds.py --datasets all --backbones efficientnet-lite0 dinov2-s14 \
        --coreset 0.1 --out thresholds_suite          -> eval/results/thresholds_suite.md / .jsonl
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generalization import RESULTS, halves, load_suite  # noqa: E402

from vlm_ad.detectors import create_detector  # noqa: E402
from vlm_ad.detectors.threshold import ThresholdPolicy  # noqa: E402

RULES = {
    "q99 (old default)": lambda s: ThresholdPolicy(quantile=0.99).fit(s).threshold_,
    "max": lambda s: float(np.max(s)),
    "mean + 3 sd": lambda s: float(np.mean(s) + 3 * np.std(s, ddof=1)),
    "mean + 2 sd": lambda s: float(np.mean(s) + 2 * np.std(s, ddof=1)),
    "mean + 1 sd": lambda s: float(np.mean(s) + np.std(s, ddof=1)),
    "median": lambda s: float(np.median(s)),
}


def balanced(labels: np.ndarray, flagged: np.ndarray) -> tuple[float, float, float]:
    """(balanced accuracy, share of defects flagged, share of normal images passed)."""
    tpr = float(flagged[labels == 1].mean()) if (labels == 1).any() else float("nan")
    tnr = float((~flagged[labels == 0]).mean()) if (labels == 0).any() else float("nan")
    return (tpr + tnr) / 2, tpr, tnr


CHOSEN_ON = ("square", "elongated", "magnetic", "textile")  # the sets the default rule was chosen on


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(CHOSEN_ON), help="sets of the suite, or 'all'")
    ap.add_argument("--backbones", nargs="+", default=["efficientnet-lite0"])
    ap.add_argument("--coreset", type=float, default=1.0, help="PatchCore's coreset (1.0: off, as for the choice)")
    ap.add_argument("--out", default="thresholds", help="results stem under eval/results")
    ap.add_argument("--render", action="store_true", help="only rewrite the markdown from the jsonl")
    args = ap.parse_args(argv)
    path = RESULTS / f"{args.out}.jsonl"
    if args.render:
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        return write(rows) if args.out == "thresholds" else write_suite(rows, args.out)
    torch.set_num_threads(2)
    suite = load_suite()
    names = list(suite) if args.datasets == ["all"] else args.datasets
    rows = []
    for name in names:
        train, test = suite[name]()
        which = np.array(halves(test))
        labels = np.array([s.label for s in test])
        for backbone in args.backbones:
            for shots in (4, 8):
                for seed in (0, 1, 2):
                    order = np.random.default_rng(seed).permutation(len(train))[:shots]
                    t0 = time.perf_counter()
                    det = create_detector("patchcore", backbone=backbone, coreset=args.coreset, seed=seed).fit(
                        [train[int(i)] for i in order])
                    scores = np.array([m.score for m in det.predict(test)])
                    loo = det.calibration_scores_
                    for rule, fn in RULES.items():
                        thr = fn(loo)
                        for half in ("dev", "unseen"):
                            sel = which == half
                            bacc, tpr, tnr = balanced(labels[sel], scores[sel] > thr)
                            row = {"data": name, "shots": shots, "seed": seed, "rule": rule, "half": half,
                                   "balanced_accuracy": bacc, "defects_flagged": tpr, "normal_passed": tnr,
                                   "threshold": thr}
                            if args.out != "thresholds":
                                row |= {"backbone": backbone, "coreset": args.coreset,
                                        "command": "PYTHONPATH=. python eval/bench_thresholds.py "
                                                   + shlex.join(argv if argv is not None else sys.argv[1:])}
                            rows.append(row)
                    print(f"{name} {backbone} {shots} shots seed {seed}: {time.perf_counter() - t0:.1f} s",
                          flush=True)
    RESULTS.mkdir(exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write(rows) if args.out == "thresholds" else write_suite(rows, args.out)


def _mean(rows, **key) -> tuple[float, float, float]:
    sel = [r for r in rows if all(r[k] == v for k, v in key.items())]
    b = [r["balanced_accuracy"] for r in sel]
    return float(np.mean(b)), float(np.std(b)), float(np.mean([r["defects_flagged"] for r in sel]))


def write(rows: list[dict]) -> None:
    sets = ("square", "elongated", "magnetic", "textile")
    lines = ["# Few-shot thresholds: verdict accuracy of rules set on normal images only", "",
             "Command: `PYTHONPATH=. python eval/bench_thresholds.py`. PatchCore, efficientnet-lite0 (default "
             "geometry), coreset off, 4 and 8 shots, seeds 0-2, on the dev suite of eval/bench_generalization.py. Each "
             "rule is computed from the leave-image-out scores of the normal shots only. Cells: balanced accuracy "
             "(mean ± std over seeds) / share of defects flagged.", ""]
    for half in ("dev", "unseen"):
        lines += [f"## {half} half", "", "| rule | " + " | ".join(f"{d} {k} shots" for d in sets for k in (4, 8)) +
                  " | mean |", "|---" * (2 + 2 * len(sets)) + "|"]
        for rule in RULES:
            cells, means = [], []
            for d in sets:
                for k in (4, 8):
                    m, sd, tpr = _mean(rows, data=d, shots=k, rule=rule, half=half)
                    cells.append(f"{m:.3f} ± {sd:.3f} / {tpr:.2f}")
                    means.append(m)
            lines.append(f"| {rule} | " + " | ".join(cells) + f" | {np.mean(means):.3f} |")
        lines.append("")
    lines += ["Choice: `mean + 1 sd` became PatchCore's default (`threshold_rule`). On the dev half it beats the old "
              "0.99 quantile in 5 of 8 cells, ties one and loses two by less than the seed spread (square 8 shots "
              "-0.021, magnetic 8 shots -0.008); the unseen half agrees (mean 0.791 vs 0.775; magnetic 8 shots 0.792 "
              "vs 0.692). With 4-8 shots the 0.99 quantile of the leave-image-out scores is their maximum, which "
              "flags about half of the magnetic_tile defects. Every verdict also carries the explanation's "
              "confidence and its margin to the threshold, so a user sees how sure each one is.", ""]
    (RESULTS / "thresholds.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_suite(rows: list[dict], out: str) -> None:
    """Per backbone and half: a row per (set, shots), a column per rule (balanced accuracy, seed mean), the mean, and
    how often each rule is at least as good as the default (``mean + 1 sd``) and as the old 0.99 quantile."""
    sets = list(dict.fromkeys(r["data"] for r in rows))
    default, old = "mean + 1 sd", "q99 (old default)"
    lines = ["# Few-shot thresholds on the whole suite, at the product's defaults", "",
             f"Command: `{rows[0]['command']}`. PatchCore at each backbone's default input, coreset "
             f"{rows[0]['coreset']:g}, 4 and 8 shots, seeds 0-2, every set of eval/bench_generalization.py "
             f"({', '.join(sets)}); `mean + 1 sd` (the default) was chosen on {', '.join(CHOSEN_ON)} (thresholds.md), "
             "so the other sets are a check it was not chosen on. Each rule sees only the leave-image-out scores of "
             "the normal shots. Cells: balanced accuracy (mean over seeds) / share of defects flagged; bold: the "
             "best rule of the row.", ""]
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        for half in ("dev", "unseen"):
            lines += [f"## {backbone}, {half} half", "", "| set | shots | " + " | ".join(RULES) + " |",
                      "|---|---|" + "---|" * len(RULES)]
            table: dict[str, list[float]] = {rule: [] for rule in RULES}
            new_sets: dict[str, list[float]] = {rule: [] for rule in RULES}  # sets the choice did not see
            for d in sets:
                for k in (4, 8):
                    cells = {rule: _mean(rows, data=d, shots=k, rule=rule, half=half, backbone=backbone)
                             for rule in RULES}
                    best = max(c[0] for c in cells.values())
                    lines.append(f"| {d} | {k} | " + " | ".join(
                        (f"**{m:.3f}**" if m >= best - 1e-9 else f"{m:.3f}") + f" / {tpr:.2f}"
                        for m, _sd, tpr in cells.values()) + " |")
                    for rule, c in cells.items():
                        table[rule].append(c[0])
                        if d not in CHOSEN_ON:
                            new_sets[rule].append(c[0])
            n = len(table[default])
            lines.append("| mean | | " + " | ".join(f"{np.mean(v):.3f}" for v in table.values()) + " |")
            if new_sets[default]:
                lines.append("| mean, sets not in the choice | | " + " | ".join(
                    f"{np.mean(v):.3f}" for v in new_sets.values()) + " |")
            for ref in (default, old):
                lines.append(f"| at least as good as {ref} (of {n}) | | " + " | ".join(
                    str(sum(a >= b - 1e-9 for a, b in zip(v, table[ref]))) for v in table.values()) + " |")
            lines.append("")
    (RESULTS / f"{out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
