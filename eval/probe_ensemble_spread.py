"""Probe: which point spread should the ``ensemble`` detector give the size estimate?

The evidence sizes a region by its core less the core of the map the detector draws for one anomalous patch
(``Detector.point_spread``). The ensemble's map mixes a narrow efficientnet-lite0 response with a broader DINOv2 one,
so its spread is not obvious. On the QA benchmark's synthetic dev suite (8 sets of eval/bench_qa.py; magnetic_tile
held out, never run here), the ``ensemble`` detector (8 shots, seed 0, coreset off) and the product's size rule
(``--rule``: ``size mass minus blur, small when missed`` of eval/qa_rules.py now; ``size core 0.6 minus blur, small
when missed`` before): size accuracy with each candidate spread. One JSON line per set, then the means;
eval/render_probes.py renders it into eval/results/probes.md.

    PYTHONPATH=. python eval/probe_ensemble_spread.py --out eval/results/probe_ensemble_spread.jsonl [--rule R]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_qa import _dev_sets  # noqa: E402
from probe_patch_naming import emit  # noqa: E402
from qa_rules import rule_scores  # noqa: E402

from vlm_ad.data import open_data  # noqa: E402
from vlm_ad.evaluation.run import fit_detector  # noqa: E402

RULES = ("size mass minus blur, small when missed",  # the product's size rule (vlm_ad.evidence.build.defect_share)
         "size core 0.6 minus blur, small when missed")  # the rule before, which the first run of this probe used


def _peak1(a: np.ndarray) -> np.ndarray:
    return a / max(float(a.max()), 1e-12)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    ap.add_argument("--rule", choices=RULES, default=RULES[0], help="the size rule of eval/qa_rules.py to score")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for name, root in _dev_sets(Path(tmp)).items():
            train, test = open_data(root)
            samples = [test[i] for i in range(len(test))]
            det, _ = fit_detector(train, detector="ensemble", shots=8, seed=0, coreset=1.0)
            maps = det.predict(samples)
            eff, dino = det.members_
            spreads = {
                "first member (efficientnet-lite0)": eff.point_spread,
                "mean of the members' at peak 1": lambda sh, a=eff, b=dino: (_peak1(a.point_spread(sh))
                                                                             + _peak1(b.point_spread(sh))) / 2,
                "dinov2": dino.point_spread,
            }
            row = {"data": name, "images": sum(s.label == 1 for s in samples), "rule": args.rule}
            for key, psf in spreads.items():
                row[key] = rule_scores(samples, maps, det.calibration_scores_, None, psf, None)[args.rule]
            emit(row, args.out)


if __name__ == "__main__":
    main()
