"""Benchmark the video cues on UCSD Ped2 under a protocol that cannot overfit: choose on half, report on the other.

Protocol (no test label ever reaches a model; test labels only choose among a fixed, small candidate grid):

- every cue is fitted on the normal clips Train001-012 and calibrated (false-alarm rates, fusion, event threshold)
  on the normal clips Train013-016 (the model's ``val_fraction`` 0.25);
- the candidate settings below (motion quantile / shrinkage prior / cell size, objects scoring, temporal smoothing)
  are chosen on the selection half Test001-003 and reported on the unseen half Test004-006, then the halves swap;
  the criterion is the mean of micro and macro frame AUROC on the selection half; the fusion is fixed, not chosen:
  the mean of the calibrated surprises of every cue that reaches 0.75 alone on the selection half (the max rule is
  reported beside it, and a stress test swaps in a known-bad objects variant); every row shows both halves and the
  difference, and every candidate's figures on both halves are listed for transparency (never used to choose);
- the flow baseline (max Farneback magnitude / its 99.9th percentile on the normal fit frames, 15-frame moving
  average) is on every run and chooses nothing;
- the library defaults are the Test001-003 choice; an end-to-end run of ``VideoModel`` with them checks the figures
  and adds pixel AUROC, event-region overlap and example events.

Writes eval/results/video.json and eval/results/video.md.

    PYTHONPATH=. nice .venv/bin/python eval/bench_video.py --data ../shared/data/ucsd_ped2

``--raw-cache FILE`` keeps the raw scores and per-cue timings of every candidate: a rerun refits the cues but scores
only candidates whose settings changed (the frames/s then come from the pass that scored them).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.evaluation.detection import image_auroc
from vlm_ad.evaluation.video import evaluate_results
from vlm_ad.video import VideoModel, VideoModelConfig, create_cue, load_frame_labels, open_clips
from vlm_ad.video.cues import moving_average
from vlm_ad.video.events import smooth_scores

OUT = Path(__file__).resolve().parent / "results"
HALVES = {"A": ["Test001", "Test002", "Test003"], "B": ["Test004", "Test005", "Test006"]}
SIGMAS = (2.0, 4.0, 8.0)
FUSION = "mean"  # fixed by design (see Bench.select); "max" is reported beside it
MIN_CUE_AUROC = 0.75  # a cue below this on the selection half stays out of the fusion
# scored and listed, never chosen: the centroid speed of a tracked blob jumps when blobs merge or split (crowds),
# which held on Test001-003 and failed on Test004-006 in the previous run (0.704 micro frame AUROC), so it is the
# "bad cue" of the fusion stress test instead
RETIRED = {("objects", "speed-track"), ("objects", "speed+size-track")}


def variants(appearance: dict) -> dict[str, dict[str, dict]]:
    """The candidate settings of every cue (name -> variant label -> create_cue options)."""
    motion = {f"q{q}-prior{p}-pool{k}": {"quantile": q, "prior": p, "pool": k}
              for q, p, k in itertools.product((0.99, 0.999), (20.0, 500.0), (1, 2))}
    return {"flow": {"q0.999": {}}, "motion": motion,
            "objects": {f"{w}-{f}": {"size_weight": float(w == "speed+size"), "speed_from": f}
                        for w, f in itertools.product(("speed", "speed+size"), ("flow", "track"))},
            "appearance": {"patchcore": appearance}}


def _load_cache(path: Path | None) -> dict:
    if path is None or not path.exists():
        return {}
    return json.loads(path.read_text())


def run_cues(data: Path, cands: dict, fit_clips, cal_clips, test_clips, cache: Path | None = None
             ) -> tuple[dict, dict, dict]:
    """Fit every candidate cue once (sharing decoding and optical flow), score calibration and test clips.

    ``cache``: a JSON file of raw scores and timings from an earlier run; a candidate whose settings are unchanged
    there is still fitted (the end-to-end run needs it) but not scored again; new scores are added to the file.

    Returns (fitted cues {(cue, variant): Cue}, raw scores {(cue, variant): {clip: (T,)}}, seconds per part on the
    test clips: "io", "flow_field" and each (cue, variant))."""
    ctxs = VideoModel(cues=["flow"])  # only for its frame contexts: scale 0.5 gray, 16 px cell grid
    cues = {(c, v): create_cue(c, **opts) for c, vs in cands.items() for v, opts in vs.items()}
    stored = _load_cache(cache)
    clip_names = [c.name for c in [*cal_clips, *test_clips]]
    tag = lambda k: f"{k[0]}/{k[1]}"  # noqa: E731
    done = {k for k, cue in cues.items() if tag(k) in stored and stored[tag(k)]["cfg"] == json.loads(
        json.dumps(cue.cfg)) and set(clip_names) <= set(stored[tag(k)]["raw"])}
    for clip in fit_clips:
        for cue in cues.values():
            cue.reset()
        for ctx in ctxs._contexts(clip):
            for cue in cues.values():
                cue.observe(ctx)
        print(f"fit {clip.name}", flush=True)
    for cue in cues.values():
        cue.finish_fit()
    raw = {k: {c: np.array(stored[tag(k)]["raw"][c]) for c in clip_names} if k in done else {} for k in cues}
    spent = {k: stored[tag(k)]["seconds"] if k in done else 0.0 for k in cues}
    spent |= {p: stored.get(f"_{p}", {}).get("seconds", 0.0) for p in ("io", "flow_field")}
    todo = {k: cue for k, cue in cues.items() if k not in done}
    if todo:
        spent["io"] = spent["flow_field"] = 0.0
    for clip in [*cal_clips, *test_clips] if todo else []:
        test = clip in test_clips
        for cue in todo.values():
            cue.reset()
        out = {k: [] for k in todo}
        t = time.perf_counter()
        for ctx in ctxs._contexts(clip):
            t1 = time.perf_counter()
            spent["io"] += (t1 - t) * test
            ctx.flow()
            t = time.perf_counter()
            spent["flow_field"] += (t - t1) * test
            for k, cue in todo.items():
                out[k].append(cue.step(ctx).score)
                t2 = time.perf_counter()
                spent[k] += (t2 - t) * test
                t = t2
        for k in todo:
            raw[k][clip.name] = np.array(out[k])
        print(f"scored {clip.name}", flush=True)
    if cache is not None and todo:
        stored |= {tag(k): {"cfg": cues[k].cfg, "seconds": spent[k], "raw": {c: v.tolist() for c, v in raw[k].items()}}
                   for k in todo} | {f"_{p}": {"cfg": {}, "seconds": spent[p], "raw": {}} for p in ("io", "flow_field")}
        atomic_write_bytes(cache, json.dumps(stored).encode())
    return cues, raw, spent


def aurocs(scores: dict[str, np.ndarray], labels: dict, clips: list[str]) -> tuple[float, float]:
    """Frame AUROC micro (all frames of ``clips``) and macro (mean over clips)."""
    ys, ss, per = [], [], []
    for c in clips:
        y = np.array([labels[c][i] for i in range(len(scores[c]))])
        ys.append(y)
        ss.append(scores[c])
        per.append(image_auroc(y, scores[c]))
    return image_auroc(np.concatenate(ys), np.concatenate(ss)), float(np.mean(per))


class Bench:
    """Calibrated scores of any choice of cue variants, smoothing and fusion, from the cached raw scores."""

    def __init__(self, cues: dict, raw: dict, cal: list[str], test: list[str], labels: dict) -> None:
        self.cues, self.raw, self.cal, self.test, self.labels = cues, raw, cal, test, labels

    def model(self, chosen: dict[str, str], sigma: float, fusion: str, fused: list[str]) -> VideoModel:
        """A VideoModel over the fitted variants ``chosen`` (cue -> variant), calibrated; cues outside ``fused``
        weigh 0."""
        m = VideoModel(cues=list(chosen), sigma=sigma, fusion=fusion,
                       weights={c: float(c in fused) for c in chosen})
        m.cues = {c: self.cues[(c, v)] for c, v in chosen.items()}
        m.calibrate([{c: self.raw[(c, v)][clip] for c, v in chosen.items()} for clip in self.cal])
        return m

    def scores(self, model: VideoModel, chosen: dict[str, str]) -> tuple[dict, dict]:
        """{cue: {clip: surprise}}, {clip: fused} on the test clips."""
        per, fused = {c: {} for c in chosen}, {}
        for clip in self.test:
            normed, fused[clip] = model.fuse({c: self.raw[(c, v)][clip] for c, v in chosen.items()})
            for c in chosen:
                per[c][clip] = normed[c]
        return per, fused

    def cue_auroc(self, cue: str, variant: str, sigma: float, clips: list[str]) -> float:
        """The selection criterion of one cue alone: mean of micro and macro frame AUROC on ``clips``."""
        return float(np.mean(aurocs({c: smooth_scores(self.raw[(cue, variant)][c], sigma) for c in clips},
                                    self.labels, clips)))

    def baseline(self) -> dict[str, np.ndarray]:
        """The flow baseline recipe: max flow magnitude / normal 99.9th percentile, 15-frame moving average."""
        return {c: moving_average(self.raw[("flow", "q0.999")][c], 15) for c in self.test}

    def select(self, half: list[str], cands: dict) -> dict:
        """Choose cue variants and sigma on ``half`` only, by the mean of micro and macro frame AUROC (micro alone
        favours a cue whose scores happen to line up across a few clips). The fusion is fixed, not chosen: the
        mean of the calibrated surprises (``FUSION``) of every cue that passes ``MIN_CUE_AUROC`` on ``half``.
        Choosing the rule and the subset of fused cues on three clips is what failed to transfer before (a max of
        two cues chosen on Test004-006 fell below its best cue on Test001-003)."""
        best = None
        for sigma in SIGMAS:
            chosen = {c: max((v for v in vs if (c, v) not in RETIRED),
                             key=lambda v, c=c: self.cue_auroc(c, v, sigma, half)) for c, vs in cands.items()}
            alone = {c: self.cue_auroc(c, v, sigma, half) for c, v in chosen.items()}
            fused = [c for c in chosen if c != "flow" and alone[c] >= MIN_CUE_AUROC] or [max(alone, key=alone.get)]
            m = self.model(chosen, sigma, FUSION, fused)
            auc = float(np.mean(aurocs(self.scores(m, chosen)[1], self.labels, half)))
            key = (round(auc, 4), -sigma)  # ties: less smoothing
            if best is None or key > best[0]:
                best = (key, {"sigma": sigma, "fusion": FUSION, "fused": fused, "variants": chosen})
        return best[1]


def report(bench: Bench, choice: dict, spent: dict, n_test: int) -> list[dict]:
    """Rows for one choice: every cue (chosen variant), the flow baseline and the fusion, on both halves."""
    chosen, sigma = choice["variants"], choice["sigma"]
    m = bench.model(chosen, sigma, choice["fusion"], choice["fused"])
    per, fused = bench.scores(m, chosen)
    def fps(keys: list[tuple[str, str]]) -> float:
        """Frames/s of these cues together: decoding, the shared optical flow when one of them uses it, and theirs."""
        flow = any(c in ("flow", "motion") or bench.cues[(c, v)].cfg.get("speed_from") == "flow" for c, v in keys)
        return round(n_test / (spent["io"] + flow * spent["flow_field"] + sum(spent[k] for k in keys)), 1)

    rows = [{"cue": "flow baseline (max |flow| / p99.9, 15-frame mean)", "setting": "fixed recipe",
             "scores": bench.baseline(), "fps": fps([("flow", "q0.999")])}]
    rows += [{"cue": c, "setting": f"{v}, sigma {sigma:g}", "in_fusion": c in choice["fused"], "scores": per[c],
              "fps": fps([(c, v)])} for c, v in chosen.items()]
    if "motion" in chosen and "objects" in chosen:
        mo = {k: chosen[k] for k in ("motion", "objects")}
        mm = bench.model(mo, sigma, choice["fusion"], list(mo))
        rows.append({"cue": "motion+objects", "setting": f"{choice['fusion']} of calibrated surprises",
                     "scores": bench.scores(mm, mo)[1], "fps": fps(list(mo.items()))})
    rows.append({"cue": "fused: " + "+".join(choice["fused"]), "setting": f"{choice['fusion']} of calibrated "
                 f"surprises, sigma {sigma:g}", "scores": fused,
                 "fps": fps([(c, chosen[c]) for c in chosen])})
    mx = bench.model(chosen, sigma, "max", choice["fused"])
    rows.append({"cue": "reference: same cues, max rule", "setting": f"max of calibrated surprises, sigma {sigma:g}",
                 "scores": bench.scores(mx, chosen)[1], "fps": rows[-1]["fps"]})
    for bad in sorted(v for c, v in RETIRED if c == "objects" and "objects" in choice["fused"]):
        swapped = chosen | {"objects": bad}
        for rule in ("mean", "max"):
            mb = bench.model(swapped, sigma, rule, choice["fused"])
            rows.append({"cue": f"stress: objects replaced by the retired {bad}", "setting": f"{rule} rule",
                         "scores": bench.scores(mb, swapped)[1], "fps": "-"})
    for r in rows:
        s = r.pop("scores")
        for h, clips in HALVES.items():
            r[f"micro_{h}"], r[f"macro_{h}"] = aurocs(s, bench.labels, clips)
    return rows


def end_to_end(data: Path, bench: Bench, labels: dict, test_clips) -> dict:
    """The library defaults (VideoModel()) on the cached fitted cues: full scoring, events, pixel metrics."""
    cfg = VideoModelConfig()
    opts = {c: create_cue(c, **cfg.cue_options.get(c, {})).cfg for c in cfg.cues}
    chosen = {}
    for c in cfg.cues:  # appearance has one candidate (its stride is a speed setting of the benchmark)
        match = [v for (cc, v), cue in bench.cues.items() if cc == c and (c == "appearance" or all(
            cue.cfg.get(k) == x for k, x in opts[c].items()))]
        if not match:
            return {"note": f"the default {c} settings {opts[c]} are not among the candidates"}
        chosen[c] = match[0]
    model = bench.model(chosen, cfg.sigma, cfg.fusion, [c for c in cfg.cues if cfg.weights.get(c, 1.0) > 0])
    results = [model.score_clip(c) for c in test_clips]
    metrics = evaluate_results(model, results, labels, data)
    out = {"defaults": {"cues": cfg.cues, "weights": cfg.weights, "sigma": cfg.sigma, "fusion": cfg.fusion,
                        "variants": chosen}, "threshold": model.threshold_}
    for h, clips in HALVES.items():
        out[f"micro_{h}"], out[f"macro_{h}"] = aurocs({r.clip: r.smoothed for r in results}, labels, clips)
    out |= {k: metrics[k] for k in ("pixel_auroc", "pixel_frames", "event_region_overlap", "event_frames_with_masks",
                                    "events")}
    out["example_events"] = [e.explanation.summary for r in results for e in r.events][:6]
    out["object_rules"] = model.cues["objects"].rules_text() if "objects" in model.cues else []
    return out


def _table(rows: list[dict], sel: str, fmt) -> list[str]:
    other = "B" if sel == "A" else "A"
    md = [f"| cue | setting | in fusion | micro {HALVES['A'][0]}-{HALVES['A'][-1][-3:]} | macro | micro "
          f"{HALVES['B'][0]}-{HALVES['B'][-1][-3:]} | macro | unseen - chosen-on (micro) | frames/s |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['cue']} | {r['setting']} | {fmt(r.get('in_fusion'))} | {fmt(r['micro_A'])} | "
                  f"{fmt(r['macro_A'])} | {fmt(r['micro_B'])} | {fmt(r['macro_B'])} | "
                  f"{r[f'micro_{other}'] - r[f'micro_{sel}']:+.3f} | {r['fps']} |")
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ucsd_ped2"))
    ap.add_argument("--appearance-stride", type=int, default=2)
    ap.add_argument("--appearance-frames", type=int, default=120)
    ap.add_argument("--no-appearance", action="store_true", help="leave the (slow) appearance cue out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--raw-cache", type=Path, default=None,
                    help="JSON file of raw cue scores: reused for unchanged candidates, written after scoring")
    args = ap.parse_args()
    torch.set_num_threads(2)
    np.random.seed(args.seed)
    data = Path(args.data)
    cands = variants({"stride": args.appearance_stride, "seed": args.seed, "max_frames": args.appearance_frames})
    if args.no_appearance:
        cands.pop("appearance")
    train = open_clips(data, "train")
    n_cal = int(round(len(train) * VideoModelConfig().val_fraction))
    fit_clips, cal_clips = train[: len(train) - n_cal], train[len(train) - n_cal:]
    test_clips = [c for c in open_clips(data, "test") if c.name in HALVES["A"] + HALVES["B"]]
    labels = load_frame_labels(data / "frame_labels.csv")
    t0 = time.perf_counter()
    cues, raw, spent = run_cues(data, cands, fit_clips, cal_clips, test_clips, args.raw_cache)
    run_s = time.perf_counter() - t0
    bench = Bench(cues, raw, [c.name for c in cal_clips], [c.name for c in test_clips], labels)
    n_test = sum(len(raw[("flow", "q0.999")][c]) for c in bench.test)
    record = {"protocol": __doc__.split("\n\n")[1], "data": str(data), "seed": args.seed,
              "fit_clips": [c.name for c in fit_clips], "calibration_clips": bench.cal, "halves": HALVES,
              "test_frames": n_test, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "candidates": cands, "sigmas": SIGMAS, "fusion": FUSION, "run_seconds": round(run_s, 1)}
    for sel in HALVES:
        choice = bench.select(HALVES[sel], cands)
        record[f"chosen_on_{sel}"] = {"choice": choice, "rows": report(bench, choice, spent, n_test)}
    record["candidates_table"] = {
        (c, v): [aurocs({k: smooth_scores(raw[(c, v)][k], g) for k in HALVES[h]}, labels, HALVES[h])[0]
                 for g in SIGMAS for h in HALVES] for (c, v) in cues}
    record["end_to_end"] = end_to_end(data, bench, labels, test_clips)
    OUT.mkdir(exist_ok=True)
    rec = record | {"candidates_table": {f"{c}/{v}": x for (c, v), x in record["candidates_table"].items()}}
    atomic_write_bytes(OUT / "video.json", json.dumps(rec, indent=2, default=str).encode())
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else ("yes" if v is True else "no" if v is False else str(v))  # noqa: E731,E501
    md = ["# Video cues on UCSD Ped2: chosen on one half of the test clips, reported on the other", "",
          f"data {data.name}; cues fitted on {fit_clips[0].name}-{fit_clips[-1].name[-3:]}, calibrated on "
          f"{cal_clips[0].name}-{cal_clips[-1].name[-3:]} (normal clips only); {n_test} test frames "
          f"({', '.join(bench.test)}); seed {args.seed}; appearance: PatchCore efficientnet-lite0 224px coreset 0.1, "
          f"bank every 10th normal frame (max {args.appearance_frames}), scored every {args.appearance_stride} "
          f"frame(s); frames/s at 360x240 with {torch.get_num_threads()} torch threads on a shared, loaded "
          f"{os.cpu_count()}-core machine (decoding and flow included). Frame AUROC on each half; a cue enters "
          f"the fusion only with (micro + macro) / 2 >= {MIN_CUE_AUROC} on the half it is chosen on; the fusion "
          "rule is fixed (mean of calibrated surprises, recalibrated: -log10 of the share of normal calibration "
          "frames whose combined evidence is as strong). Choices use the selection half only; the unseen half is "
          "never looked at to choose. Retired, never chosen: "
          + ", ".join(f"{c} {v}" for c, v in sorted(RETIRED)) + " (tracked-centroid speed jumps when crowds merge or "
          "split; it fell to 0.704 on Test004-006 in the previous run, so that half saw this decision).", ""]
    for sel, other in (("A", "B"), ("B", "A")):
        ch = record[f"chosen_on_{sel}"]["choice"]
        md += [f"## Chosen on {', '.join(HALVES[sel])}; unseen: {', '.join(HALVES[other])}", "",
               f"choice: sigma {ch['sigma']:g}, fusion {ch['fusion']}, fused {'+'.join(ch['fused'])}, variants "
               + ", ".join(f"{c} {v}" for c, v in ch["variants"].items()), ""]
        rows = record[f"chosen_on_{sel}"]["rows"]
        md += _table(rows, sel, fmt) + [""]
        fused_row = next(r for r in rows if r["cue"].startswith("fused"))
        cue_rows = [r for r in rows if r.get("in_fusion")]
        md += [f"Fused minus the best cue in the fusion, micro frame AUROC: {HALVES[h][0]}-{HALVES[h][-1][-3:]} "
               f"{fused_row[f'micro_{h}'] - max(r[f'micro_{h}'] for r in cue_rows):+.3f}"
               f"{' (unseen)' if h == other else ' (chosen on)'}" for h in ("A", "B")] + [""]
    md += ["## Every candidate on both halves (micro frame AUROC, cue alone; for transparency, not for choosing)", "",
           "| cue | variant | " + " | ".join(f"sigma {g:g} {h}" for g in SIGMAS for h in HALVES) + " |",
           "|---|---|" + "---|" * (len(SIGMAS) * len(HALVES))]
    for (c, v), vals in record["candidates_table"].items():
        md.append(f"| {c} | {v} | " + " | ".join(fmt(x) for x in vals) + " |")
    md.append("")
    e2e = record["end_to_end"]
    md += ["## Library defaults end to end (VideoModel() with the Test001-003 choice)", ""]
    if "note" in e2e:
        md += [e2e["note"], ""]
    else:
        md += [f"defaults {e2e['defaults']}; fused micro/macro {fmt(e2e['micro_A'])}/{fmt(e2e['macro_A'])} on "
               f"Test001-003, {fmt(e2e['micro_B'])}/{fmt(e2e['macro_B'])} on Test004-006 (unseen); pixel AUROC "
               f"{fmt(e2e['pixel_auroc'])}; event-region overlap {fmt(e2e['event_region_overlap'])}; "
               f"{e2e['events']} events; threshold {e2e['threshold']:.2f} (fused surprise, -log10 false-alarm "
               "rate).", ""]
        md += ["Object rules learned on the normal clips:", ""] + [f"- {x}" for x in e2e["object_rules"]]
        md += ["", "Example event summaries:", ""] + [f"- {x}" for x in e2e["example_events"]]
    atomic_write_bytes(OUT / "video.md", ("\n".join(md) + "\n").encode())
    print("\n".join(md))


if __name__ == "__main__":
    main()
