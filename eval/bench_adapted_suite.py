"""``adapted`` vs the frozen PatchCore it adapts, on the dev suite of eval/bench_generalization.py.

For each data set and seed: 8 normal shots (the suite's draw); ``patchcore`` (frozen DINOv2-S blocks 5+7 at its
dinov2-s14 default input, coreset off) is the reference. The ``adapted`` detector (at the same input) trains its
adapter on the same 8 shots (LoRA + head against synthetic defects, a small recipe: ``--epochs`` x ``--steps`` x
batch 4), builds its bank from them, and is scored from one embedding of the test images (one per input shape):
``fuse="auto", score="auto"`` (the weight and image score it chose at fit time on the shots + synthetic anomalies,
never test labels: a head weight only when a paired bootstrap over those validation images says it beats retrieval
alone in at least 95% of resamples, then the top-1% mean instead of the map maximum only when it beats it so surely;
see vlm_ad/detectors/fuse_choice.py), ``fuse=0.5`` (the old fixed weight, here with the frozen bank, top-1% score)
and ``fuse=1`` (retrieval alone: the reference PatchCore's map) with each image score, plus both scores at the chosen
weight when it is not 1. Every row also gives its image AUROC on the two seeded halves of the test images
(bench_generalization.halves), and the report checks whether the validation choice of the image score predicted the
test (each candidate rule applied to the recorded validation figures). Cells: image AUROC / pixel AUROC / AUPRO@0.3
on all test images of the set (textile: image labels only). Writes eval/results/adapted_suite.{jsonl,md};
``--markdown-only`` rewrites the report from the jsonl.

    PYTHONPATH=. nice python eval/bench_adapted_suite.py --datasets square elongated magnetic textile --seeds 0
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
from bench_generalization import METRICS, _shots, halves, load_suite, score  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from vlm_ad._cache import atomic_write_bytes  # noqa: E402
from vlm_ad.adapt import AdaptConfig, train_adapter  # noqa: E402
from vlm_ad.detectors import create_detector  # noqa: E402
from vlm_ad.detectors.fuse_choice import (  # noqa: E402
    FUSE_CONFIDENCE,
    FUSE_MARGIN,
    FUSE_RESAMPLES,
    SCORE_CONFIDENCE,
    SCORE_TIE,
    pick_score,
)

RESULTS = Path(__file__).resolve().parent / "results"
RENAMED = {"adapted fuse=1 (adapted retrieval only)": "adapted fuse=1 (retrieval alone, topk score)"}
REF = "patchcore dinov2 b5+b7 default input (frozen, what adapted adapts)"


def _halves(test, preds) -> dict[str, float]:
    """Image AUROC on each seeded half of the test images (bench_generalization.halves: ``dev`` / ``unseen``)."""
    half = halves(test)
    return {h: round(float(roc_auc_score([s.label for s, x in zip(test, half) if x == h],
                                         [p[0] for p, x in zip(preds, half) if x == h])), 4) for h in ("dev", "unseen")}


def run(train, test, seed: int, recipe: dict) -> list[dict]:
    shots = _shots(train, seed)
    t0 = time.perf_counter()
    pc = create_detector("patchcore", backbone="dinov2-s14", coreset=1.0,
                         seed=seed).fit(shots)  # PatchCore's dinov2-s14 default input, which adapted embeds at too
    preds = [(m.score, m.map) for m in pc.predict(test)]
    rows = [{"row": REF, "fit_seconds": round(time.perf_counter() - t0, 1), **score(test, preds, [True] * len(test)),
             "image_auroc_halves": _halves(test, preds)}]
    t0 = time.perf_counter()
    res = train_adapter([s.image for s in shots], AdaptConfig(seed=seed, **recipe))
    det = create_detector("adapted", seed=seed).use_trained(res.net, res.head, res.config).fit(shots)
    fit_s = round(time.perf_counter() - t0, 1)
    arrays = [s.image for s in test]
    groups = det._shape_groups(arrays)  # as predict: one embedding per input shape
    embs = [det._embed([arrays[i] for i in idx], None) for idx in groups]
    chosen = det.fusion_
    w_auto, s_auto = chosen["fuse"], chosen["image_score"]["score"]
    variants = [(f"adapted fuse=auto score=auto (chose fuse {w_auto:g}, {s_auto} score{_sure(chosen)})", w_auto,
                 s_auto), ("adapted fuse=0.5 (old)", 0.5, "topk"),
                ("adapted fuse=1 (retrieval alone, topk score)", 1.0, "topk"),
                ("adapted fuse=1 (retrieval alone, max score)", 1.0, "max")]
    if w_auto != 1:  # both scores at the chosen weight, so that every score rule can be checked on the test set
        variants += [(f"adapted fuse={w_auto:g} (chosen), {s} score", w_auto, s) for s in ("topk", "max")]
    for name, w, sc in variants:
        det.fusion_ = chosen | {"fuse": w, "image_score": chosen["image_score"] | {"score": sc}}
        preds = [None] * len(arrays)
        for idx, emb in zip(groups, embs):
            grids, hits = det._score_embeddings(emb)
            maps = det._to_maps(grids, [arrays[i].shape[:2] for i in idx], [test[i].image_id for i in idx], hits)
            for i, m in zip(idx, maps):
                preds[i] = (m.score, m.map)
        rows.append({"row": name, "fit_seconds": fit_s, "fuse": w, "score": sc,
                     **score(test, preds, [True] * len(test)), "image_auroc_halves": _halves(test, preds)})
    det.fusion_ = chosen
    for r in rows:
        r["fusion"] = chosen
    return rows


def _sure(fusion: dict) -> str:
    """How sure the auto choice was: the bootstrap confidence of the best head weight, or the rule it predates."""
    if "rule" not in fusion:
        return "; margin rule, before the bootstrap"
    c = fusion.get("confidence")
    return "" if c is None else f"; best head weight beat retrieval in {c:.0%} of resamples"


FIRST = "PYTHONPATH=. nice python eval/bench_adapted_suite.py --datasets square elongated magnetic textile --seeds 0"


def markdown(rows: list[dict]) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    command = "`, `".join(dict.fromkeys(r.get("command", FIRST) for r in rows))  # the first run did not record it
    out = ["# adapted vs the PatchCore it adapts (dev suite)", "",
           f"Written by `{command}` (2 CPU cores shared with other jobs; a run keeps the rows of other (data, seed) "
           "pairs). Data: the dev suite of eval/bench_generalization.py (all "
           "test images of each set; textile: image labels only). 8 normal shots per seed (the suite's draw); "
           "DINOv2-S/14 blocks 5+7 at PatchCore's dinov2-s14 default input (`area` 364, short side at least 224 px, "
           "shrunk at most 3x) for every row; the adapter trains at 224 px square, on the same 8 shots (small "
           "recipe, see the command), so every row sees only those 8 normal images. Cells: image AUROC / pixel AUROC "
           "/ AUPRO@0.3. `auto` is chosen at fit on the shots (leave-image-out) + synthetic anomalies made on them; "
           "test labels are never used. Choice rule (vlm_ad/detectors/fuse_choice.py): a head weight (below 1) is "
           f"kept only when its validation mean of image and patch AUROC beats retrieval alone's by more than "
           f"{FUSE_MARGIN}, it loses on neither AUROC, and it beats retrieval alone in at least {FUSE_CONFIDENCE:.0%} "
           f"of {FUSE_RESAMPLES:,} paired bootstrap resamples of the validation images (normal and synthetic "
           "resampled apart, seed fixed); else fuse 1. `score=auto` then chooses the image score at that weight on "
           "the same validation images (vlm_ad/detectors/fuse_choice.py, pick_score): the map maximum (PatchCore's "
           f"score, the base) unless the top-1% mean's validation image AUROC is higher and beats the maximum's in at "
           f"least {SCORE_CONFIDENCE:.0%} of the same paired resamples; an exact tie keeps {SCORE_TIE}. The `dev` / "
           "`unseen` columns are the image AUROC on bench_generalization's two seeded halves of the test images."
           + (" Rows marked 'margin rule' were written before the bootstrap (the margin and no-loss tests only)."
              if any("rule" not in r["fusion"] for r in rows) else ""), "",
           "| data | seed | row | image AUROC | pixel AUROC | AUPRO | image AUROC dev / unseen half | fit s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["dataset"], r["seed"])):
        h = r.get("image_auroc_halves")
        h = f"{h['dev']:.3f} / {h['unseen']:.3f}" if h else "-"
        out.append(f"| {r['dataset']} | {r['seed']} | {r['row']} | {f(r['image_auroc'])} | {f(r['pixel_auroc'])} | "
                   f"{f(r['aupro'])} | {h} | {r['fit_seconds']} |")
    out += ["", "Fusion chosen at fit (validation image / patch AUROC per retrieval weight, and for head weights the "
            "share of bootstrap resamples in which the mean beat retrieval alone's):", ""]
    seen = set()
    for r in sorted(rows, key=lambda r: (r["dataset"], r["seed"])):
        key = (r["dataset"], r["seed"])
        if key in seen:
            continue
        seen.add(key)
        v = r["fusion"]["validation"]
        cells = ", ".join(f"{w}: {v[w]['image_auroc']:.3f}/{v[w]['patch_auroc']:.3f}"
                          + (f" ({v[w]['confidence']:.0%})" if "confidence" in v[w] else "") for w in v)
        old = "" if "rule" in r["fusion"] else "; margin rule, before the bootstrap"
        sc = r["fusion"].get("image_score")
        sc = (f"; image score {sc['score']}: {sc['reason']}" if sc else "; image score topk (given, before the choice)")
        out.append(f"- {key[0]} seed {key[1]}: fuse {r['fusion']['fuse']:g}, {r['fusion']['reason']}{old}; "
                   f"image/patch AUROC by weight {cells}{sc}")
    return "\n".join(out + differences(rows, sorted(seen)) + score_rules(rows, sorted(seen))) + "\n"


RULES = {  # image-score rules from the validation figures (score_table) -> the score used
    "always max (PatchCore's score)": lambda v: "max",
    "always topk (the detector before score=auto)": lambda v: "topk",
    "topk when its validation AUROC is higher (tie: max)": lambda v: "topk" if _gain(v) > 0 else "max",
    "topk unless its validation AUROC is lower (tie: topk)": lambda v: "topk" if _gain(v) >= 0 else "max",
    "topk when it beats max in >= 95% of resamples (pick_score, the default)": lambda v: pick_score(v)[0],
}


def _gain(v: dict) -> float:
    return v["topk"]["image_auroc"] - v["max"]["image_auroc"]


def score_rules(rows: list[dict], keys: list[tuple]) -> list[str]:
    """Does the validation choice of the image score predict the test? Each rule of :data:`RULES` applied to the
    recorded validation figures, scored by auto - PatchCore image AUROC on each half of the test images."""
    per, lines = {}, []
    for key in keys:
        mine = [r for r in rows if (r["dataset"], r["seed"]) == key]
        auto = next(r for r in mine if r["row"].startswith("adapted fuse=auto"))
        if "image_score" not in auto["fusion"]:
            continue  # written before the score choice
        w, v = auto["fusion"]["fuse"], auto["fusion"]["image_score"]["validation"]
        ref = next(r for r in mine if r["row"] == REF)
        test = {sc: next(r for r in mine if r.get("fuse") == w and r.get("score") == sc and r is not auto)
                for sc in ("max", "topk")}
        per[key] = (v, test, ref)
        d = {"all": test["topk"]["image_auroc"] - test["max"]["image_auroc"],
             **{h: test["topk"]["image_auroc_halves"][h] - test["max"]["image_auroc_halves"][h]
                for h in ("dev", "unseen")}}
        lines.append(f"| {key[0]} | {key[1]} | {v['max']['image_auroc']:.3f} / {v['topk']['image_auroc']:.3f} "
                     f"({v['topk']['confidence']:.0%} / {v['topk']['loses']:.0%}) | "
                     + " / ".join(f"{d[h]:+.3f}" for h in ("all", "dev", "unseen"))
                     + f" | {auto['fusion']['image_score']['score']} |")
    if not per:
        return []
    out = ["", "## Image score: does the validation choice predict the test?", "",
           "Per (data, seed), at the chosen weight: validation image AUROC of the map maximum / top-1% mean (share of "
           "1,000 paired resamples in which top-k beat / lost to max), and on the test images top-k - max image "
           "AUROC on all images / the dev half / the unseen half.", "",
           "| data | seed | validation max / topk (topk won / lost) | test topk - max: all / dev / unseen | chosen |",
           "| --- | --- | --- | --- | --- |", *lines, "",
           "Each rule applied to the recorded validation figures (no test labels), then auto - frozen PatchCore image "
           "AUROC over the (data, seed) pairs above: mean, worst, and pairs below the PatchCore by more than 0.001, "
           "on each half of the test images:", "",
           "| rule | dev half: mean / worst / below | unseen half: mean / worst / below |", "| --- | --- | --- |"]
    for name, rule in RULES.items():
        cells = []
        for h in ("dev", "unseen"):
            d = [t[rule(v)]["image_auroc_halves"][h] - ref["image_auroc_halves"][h] for v, t, ref in per.values()]
            cells.append(f"{np.mean(d):+.3f} / {min(d):+.3f} / {sum(x < -0.001 for x in d)} of {len(d)}")
        out.append(f"| {name} | {cells[0]} | {cells[1]} |")
    sign = lambda x: (x > 1e-9) - (x < -1e-9)  # noqa: E731
    agree = {h: sum(sign(_gain(v)) == sign(t["topk"]["image_auroc_halves"][h] - t["max"]["image_auroc_halves"][h])
                    for v, t, _ in per.values()) for h in ("dev", "unseen")}
    higher = sum(_gain(v) > 0 for v, _, _ in per.values())
    kept = sum(pick_score(v)[0] == "topk" for v, _, _ in per.values())
    return out + ["", f"The top-1% mean had the higher validation image AUROC in {higher} of {len(per)} pairs; the "
                  "sign of its validation gain over the maximum matched the sign of its test gain in "
                  f"{agree['dev']} of {len(per)} pairs on the dev half and {agree['unseen']} of {len(per)} on the "
                  "unseen half. The default rule keeps the maximum unless the top-1% mean wins surely "
                  f"(it did in {kept} of {len(per)} "
                  "pairs), so where it chose retrieval alone and the maximum the adapted detector's image AUROC is the "
                  "frozen PatchCore's on both halves; the `always topk` row is what that safety costs or saves."]


def differences(rows: list[dict], keys: list[tuple]) -> list[str]:
    """auto - frozen PatchCore per (data, seed), against the PatchCore's own spread over the seeds run."""
    ref = {k: next(r for r in rows if (r["dataset"], r["seed"]) == k and r["row"] == REF) for k in keys}
    spread = {}
    for d in {k[0] for k in keys}:
        vals = [ref[k] for k in keys if k[0] == d]
        spread[d] = {m: max(v[m] for v in vals) - min(v[m] for v in vals) for m in METRICS if vals[0][m] is not None}
    out, held = [], 0
    for key in keys:
        a = next(r for r in rows if (r["dataset"], r["seed"]) == key and r["row"].startswith("adapted fuse=auto"))
        d = {m: a[m] - ref[key][m] for m in spread[key[0]]}
        ha, hr = a.get("image_auroc_halves"), ref[key].get("image_auroc_halves")
        halves_txt = (f"; image AUROC on the dev / unseen half {ha['dev'] - hr['dev']:+.3f} / "
                      f"{ha['unseen'] - hr['unseen']:+.3f}" if ha and hr else "")
        ok = all(d[m] >= -spread[key[0]][m] - 1e-6 for m in d)
        held += ok
        sc = a["fusion"].get("image_score", {}).get("score", "topk")
        out.append(f"- {key[0]} seed {key[1]} (auto chose fuse {a['fusion']['fuse']:g}, {sc} score"
                   f"{_sure(a['fusion'])}): "
                   + " / ".join(f"{d[m]:+.3f}" for m in d) + "; frozen PatchCore's seed spread "
                   + " / ".join(f"{spread[key[0]][m]:.3f}" for m in d)
                   + halves_txt + ("" if ok else " - BELOW the PatchCore by more than its seed spread"))
    auto = [r for r in rows if r["row"].startswith("adapted fuse=auto")]
    back = [r for r in auto if r["fusion"]["fuse"] == 1]
    gap = max((abs(r[m] - ref[(r["dataset"], r["seed"])][m]) for r in back for m in METRICS[1:] if r[m] is not None),
              default=0.0)
    return ["", "Differences, auto - frozen PatchCore (image / pixel / AUPRO), with that PatchCore's spread "
            "(max - min) over the seeds run on the same set:", ""] + out + [
        "", f"`auto` chose retrieval alone in {len(back)} of {len(auto)} (set, seed) pairs; it is at or above the "
        f"frozen PatchCore within that PatchCore's seed spread in {held} of {len(keys)}. Where it chose retrieval "
        f"alone its map is the PatchCore's (pixel AUROC and AUPRO differ by at most {gap:.0e}) and the image AUROC "
        "differs by the image score alone (the top-1% mean of the map where `score=auto` chose it, or rows written "
        "before the choice; with the maximum it is the PatchCore's score up to its standardisation)."]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["square", "elongated", "magnetic", "textile"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown-only", action="store_true",
                    help="rewrite adapted_suite.md from the jsonl (after a change to this report); runs nothing")
    args = ap.parse_args(argv)
    out = RESULTS / "adapted_suite.jsonl"
    if args.markdown_only:
        atomic_write_bytes(RESULTS / "adapted_suite.md", markdown(list(map(json.loads, out.read_text().splitlines())))
                           .encode())
        return 0
    torch.set_num_threads(args.threads)
    command = shlex.join(["PYTHONPATH=.", "nice", "python", "eval/bench_adapted_suite.py", *(argv or sys.argv[1:])])
    suite = load_suite()
    recipe = {"epochs": args.epochs, "steps_per_epoch": args.steps, "batch_size": 4}
    redo = {(d, seed) for d in args.datasets for seed in args.seeds}  # rows of other (data, seed) pairs are kept
    rows = [r for r in map(json.loads, out.read_text().splitlines()) if (r["dataset"], r["seed"]) not in redo
            ] if out.is_file() else []
    for r in rows:  # the first run named the fuse=1 row before the retrieval half was the frozen backbone's
        r["row"] = RENAMED.get(r["row"], r["row"])
    for d in args.datasets:
        train, test = suite[d]()
        for seed in args.seeds:
            for r in run(train, test, seed, recipe):
                rows.append(r | {"dataset": d, "seed": seed, "shots": 8, "n_test": len(test), "recipe": recipe,
                                 "command": command})
                print(d, seed, r["row"], {m: r[m] for m in METRICS}, file=sys.stderr, flush=True)
            atomic_write_bytes(out, "".join(json.dumps(r) + "\n" for r in rows).encode())
            atomic_write_bytes(RESULTS / "adapted_suite.md", markdown(rows).encode())
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
