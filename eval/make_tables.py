"""Turn ``eval/results/detectors.jsonl`` into ``eval/results/detectors.md`` (mean ± std over seeds).

    python eval/make_tables.py
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "f1_max", "pointing_game")


def fmt(values: list) -> str:
    """'0.812' for one value, '0.812 ± 0.021' for several, '-' for none (metric undefined for this data)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def table(rows: list[dict]) -> str:
    """One markdown table: a line per (data, backbone, detector, shots), seeds aggregated."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["data"], r["backbone"], r["detector"], str(r["shots"]))].append(r)
    head = ["data", "split", "backbone", "detector", "shots", "seeds", *METRICS, "fit s", "scoring ms/img",
            "backbone ms/img"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {"1": 1, "4": 4, "8": 8, "all": 1000, "0": 0}
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], order.get(k[3], 99))):
        g = groups[key]
        seeds = ",".join(str(r["seed"]) for r in g)
        cells = [key[0], g[0]["split"], key[1], key[2], key[3], seeds, *(fmt([r.get(m) for r in g]) for m in METRICS),
                 fmt([r["fit_seconds"] for r in g]), fmt([r["scoring_ms_per_image"] for r in g]),
                 fmt([r["backbone_ms_per_image"] for r in g])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    src = RESULTS / "detectors.jsonl"
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    text = (
        "# Detector benchmark\n\n"
        "Produced by `python eval/bench_detectors.py && python eval/make_tables.py` (2-core CPU, torch 2.14.1).\n"
        "Image size 224 px. Few-shot rows: shots drawn from train/good with seeds 0, 1, 2 (mean ± std); "
        "`all` = every training image (seed 0); `mutual` is zero-shot (no normal image, all test images scored "
        "against each other). magnetic_tile: `../shared/data/magnetic_tile` (real, MVTec layout, masks). "
        "textile: PyPI conformal-clip-data (simulated; train = 200 nominal images, test = balanced 600 of the "
        "rest, seed 0; image labels only, so pixel metrics are '-'). Backbone features are extracted once per "
        "data/backbone, so `fit s` excludes the backbone; `backbone ms/img` is the median per-image feature time "
        "(machine shared with other jobs while this ran: treat timings as upper bounds).\n\n"
        + table(rows) + "\n"
    )
    (RESULTS / "detectors.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
