"""Probe: naming a detected defect by voting of its strongest patches against labelled defect patches.

Per dataset (MVTec layout): PatchCore (efficientnet-lite0, 8 shots, seed 0, coreset 1.0) and the QA benchmark's
library (3 examples per defect type, seed 0). For every other anomalous test image with a type, the type named
(a) from the map's core region by the library's descriptors through the map lens (what the product does now,
approximated: the core is the map's cells at 0.7 of its range, the component holding the maximum), (b) the same
region by DINOv2 region features, (c) by the labelled library patches nearest to the map's 5 strongest cells, in the
detector's own features, (d) the same in DINOv2 (blocks 5 + 7) features, (e) the map core by descriptors + DINOv2
region features (``combined``, the library's default before), (f) the map core's DINOv2 patches voting (the library's
``patches`` mode).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vlm_ad.data import MVTecDataset, open_data  # noqa: E402
from vlm_ad.evaluation.run import fit_detector  # noqa: E402
from vlm_ad.naming import DeepRegionEncoder, DefectLibrary, _grid_weights  # noqa: E402

TILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic_tile"


def core(amap: np.ndarray, level: float = 0.7) -> np.ndarray:
    lo, hi = float(amap.min()), float(amap.max())
    lab, _ = ndimage.label(amap >= lo + level * (hi - lo))
    y, x = np.unravel_index(int(np.argmax(amap)), amap.shape)
    return lab == lab[y, x]


def tally(query: np.ndarray, weights: np.ndarray, bank: np.ndarray, labels: np.ndarray) -> Counter:
    """Each query row votes for the label of its nearest bank row, weight ``weights`` / (distance + 0.001); the votes
    as shares of their sum."""
    dist, idx = torch.cdist(torch.from_numpy(np.asarray(query, np.float32)),
                            torch.from_numpy(np.asarray(bank, np.float32))).min(dim=1)
    out: Counter = Counter()
    for w, di, i in zip(np.asarray(weights, np.float64), dist.tolist(), idx.tolist()):
        out[str(labels[i])] += float(w) / (di + 1e-3)
    total = sum(out.values()) or 1.0
    return Counter({k: v / total for k, v in out.items()})


def vote(query: np.ndarray, weights: np.ndarray, bank: np.ndarray, labels: np.ndarray) -> str:
    """The label :func:`tally` gives most votes."""
    votes = tally(query, weights, bank, labels)
    return max(votes, key=votes.get)


def run(name: str, root: Path, top: int) -> dict:
    train, test = open_data(root)
    det, _ = fit_detector(train, detector="patchcore", backbone="efficientnet-lite0", shots=8, seed=0, coreset=1.0)
    desc_lib = DefectLibrary(features="descriptors").add_mvtec(root, per_type=3, seed=0)
    enc = DeepRegionEncoder()
    deep_lib = DefectLibrary(features="deep", encoder=enc).add_mvtec(root, per_type=3, seed=0)
    comb_lib = DefectLibrary(features="combined", encoder=enc).add_mvtec(root, per_type=3, seed=0)
    patch_lib = DefectLibrary(features="patches", encoder=enc).add_mvtec(root, per_type=3, seed=0)
    held = set(desc_lib.example_ids)
    mv = MVTecDataset(root, "test")
    eff_bank, eff_lab, dino_bank, dino_lab = [], [], [], []
    for i in range(len(mv)):
        s = mv[i]
        if s.image_id not in held or s.mask is None:
            continue
        emb = det._embed([s.image], None)
        emb = emb if isinstance(emb, torch.Tensor) else emb[0][None]
        _, gh, gw, c = emb.shape
        w = _grid_weights(s.mask, (gh, gw))
        keep = w >= min(0.25 * w.max(), w.max())
        eff_bank.append(emb[0].numpy()[keep])
        eff_lab += [s.defect_type] * int(keep.sum())
        g = enc.grids(s.image)
        w = _grid_weights(s.mask, g.shape[:2])
        keep = w >= min(0.25 * w.max(), w.max())
        dino_bank.append(g[keep])
        dino_lab += [s.defect_type] * int(keep.sum())
    eff_b, dino_b = np.concatenate(eff_bank), np.concatenate(dino_bank)
    eff_l, dino_l = np.array(eff_lab), np.array(dino_lab)
    samples = [test[i] for i in range(len(test))]
    asked = [s for s in samples if s.label == 1 and s.defect_type and s.image_id not in held]
    maps = det.predict(asked)
    right: dict[str, list[bool]] = defaultdict(list)
    for s, m in zip(asked, maps):
        region = core(m.map)
        right["(a) descriptors, map core"].append(desc_lib.name(s.image, region, from_map=True).name == s.defect_type)
        right["(b) dinov2 region, map core"].append(deep_lib.name(s.image, region, from_map=True).name == s.defect_type)
        right["(e) combined, map core"].append(comb_lib.name(s.image, region, from_map=True).name == s.defect_type)
        right["(f) patches mode, map core"].append(
            patch_lib.name(s.image, region, from_map=True).name == s.defect_type)
        emb = det._embed([s.image], None)
        emb = emb if isinstance(emb, torch.Tensor) else emb[0][None]
        grid = det._score_groups([emb])[0][0][0]
        flat = grid.reshape(-1)
        k = min(top, flat.numel())
        best = torch.topk(flat, k)
        q = emb[0].reshape(-1, emb.shape[-1])[best.indices].numpy()
        right["(c) patch vote, detector features"].append(
            vote(q, best.values.numpy(), eff_b, eff_l) == s.defect_type)
        g = enc.grids(s.image)
        small = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(m.map)[None, None].float(),
                                                        g.shape[:2])[0, 0].reshape(-1)
        best = torch.topk(small, min(top, small.numel()))
        q = g.reshape(-1, g.shape[-1])[best.indices.numpy()]
        right["(d) patch vote, dinov2 features"].append(vote(q, best.values.numpy(), dino_b, dino_l) == s.defect_type)
    types = sorted({s.defect_type for s in asked})
    return {"data": name, "images": len(asked), "types": len(types), "chance": round(1 / len(types), 3),
            **{k: round(float(np.mean(v)), 3) for k, v in right.items()}}


def probe_main(run_one, option: str, default: float | int, *, data: list[str], description: str | None = None
               ) -> None:
    """The probes' command line: ``--data`` (names for :func:`probe_sets`), the probe's own ``option`` and ``--out``;
    ``run_one(name, root, value)`` makes each dataset's JSON line."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", nargs="+", default=data)
    p.add_argument(option, type=type(default), default=default)
    p.add_argument("--out", help="append each dataset's JSON line to this file too")
    a = p.parse_args()
    torch.set_num_threads(2)
    value = getattr(a, option.lstrip("-").replace("-", "_"))
    for name, root in probe_sets(a.data).items():
        emit(run_one(name, root, value), a.out)


def suite_main(records, *, datasets: list[str], description: str | None = None,
               argv: list[str] | None = None) -> None:
    """The command line of the probes on eval/bench_generalization.py's sets: ``--datasets``, ``--seeds``,
    ``--threads``, ``--out``; ``records(train, test, seed)`` gives the JSON lines of one (set, seed), each prefixed
    with its ``dataset`` and ``seed``."""
    import bench_generalization as bg

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--datasets", nargs="+", default=datasets)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    suite = bg.load_suite()
    for name in args.datasets:
        train, test = suite[name]()
        for seed in args.seeds:
            for record in records(train, test, seed):
                emit({"dataset": name, "seed": seed, **record}, args.out)


def main() -> None:
    probe_main(run, "--top", 5, data=["magnetic", "dev"])


def probe_sets(names: list[str]) -> dict[str, Path]:
    """MVTec-layout folders of the probes: ``dev`` (bench_qa's 8 synthetic sets), ``dev-more`` (6 more of the same
    kind, seeds 2 and 3, generated after the first 8 had been looked at), ``magnetic`` (magnetic_tile, held out)."""
    sets: dict[str, Path] = {}
    if "dev" in names:
        from bench_qa import _dev_sets

        sets |= _dev_sets(Path(tempfile.mkdtemp()))
    if "dev-more" in names:
        from vlm_ad.data import DEFECT_TYPES, generate_dataset

        tmp = Path(tempfile.mkdtemp())
        for seed in (2, 3):
            sets |= {f"dev/{k}-s{seed}": v for k, v in generate_dataset(
                tmp / f"dev{seed}", sources=("brick", "grass", "gravel"), n_train=8, n_test_good=14, n_test_per_type=6,
                types=DEFECT_TYPES, image_size=256, seed=seed).items()}
    if "magnetic" in names and TILE.is_dir():
        sets["magnetic_tile"] = TILE
    return sets


def emit(record: dict, out: str | None) -> None:
    """Print one dataset's JSON line, and append it to ``out`` when given."""
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
