"""Reliability: bad inputs through the real command line, as a user would meet them.

Each class of bad input runs ``vlm-ad`` in a fresh process and is judged on: the exit code (0 all done, 1 some
inputs failed, 2 usage or configuration error), a message that names the problem, no raw traceback, nothing
half-written (no temporary files left), and, for batch reports, no lost and no duplicated record (after SIGKILL at
random moments and a rerun). Writes ``eval/results/reliability.md`` and ``.json``.

    python eval/bench_reliability.py [--kills 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RUN = ("import resource, runpy, sys\nsys.argv = ['vlm-ad'] + sys.argv[1:]\ntry:\n"
       "    runpy.run_module('vlm_ad.cli', run_name='__main__')\nfinally:\n"
       "    print(f'PEAK_RSS_MB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}', file=sys.stderr)\n")


def cli(*args: str, timeout: int = 300) -> tuple[int, str, float]:
    """Run ``vlm-ad ARGS`` in a fresh process: (exit code, stdout + stderr, peak RSS in MiB)."""
    env = os.environ | {"COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", RUN, *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=timeout)
    out = p.stdout + p.stderr
    rss = next((float(line.split("=")[1]) for line in out.splitlines() if line.startswith("PEAK_RSS_MB=")), 0.0)
    return p.returncode, out, rss


def setup(root: Path) -> tuple[Path, Path, Path]:
    """A small synthetic category, a model fitted on it, and a folder of its test images."""
    from vlm_ad.data import generate_dataset

    cat = generate_dataset(root / "data", sources=("brick",), n_train=4, n_test_good=3, n_test_per_type=3,
                           types=("hole", "crack"), image_size=96, seed=0)["brick"]
    model = root / "model"
    code, out, _ = cli("fit", cat, "--shots", "4", "--out", model, "-o", "image_size=96")
    assert code == 0, out
    images = root / "images"
    images.mkdir()
    for p in sorted((cat / "test").rglob("*.png")):
        (images / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    return cat, model, images


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*.tmp")] if folder.exists() else []


def records(out: Path) -> list[dict]:
    path = out / "report.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def cases(root: Path, cat: Path, model: Path, images: Path):
    """(class, argv, expected exit, text the message must hold, output folder to check) for each bad input."""
    from PIL import Image

    def folder(name: str, *files: tuple[str, bytes]) -> Path:
        d = root / name
        d.mkdir()
        good = next(images.glob("good_*.png"))
        (d / "good.png").write_bytes(good.read_bytes())
        for fname, data in files:
            (d / fname).write_bytes(data)
        return d

    empty = root / "empty"
    empty.mkdir()
    jpg = root / "x.jpg"
    Image.new("RGB", (64, 64), (90, 90, 90)).save(jpg)
    big = root / "big" / "flat.png"
    big.parent.mkdir()
    Image.new("L", (12000, 9000)).save(big)
    bad_json = copy_tree(model, root / "m_json")
    (bad_json / "detector.json").write_text("{not json")
    torn = copy_tree(model, root / "m_torn")
    t = torn / "detector.safetensors"
    t.write_bytes(t.read_bytes()[: t.stat().st_size // 2])
    high = copy_tree(model, root / "m_thr")
    meta = json.loads((high / "detector.json").read_text())
    (high / "detector.json").write_text(json.dumps(meta | {"threshold": "high"}))
    nan = copy_tree(model, root / "m_nan")
    from safetensors.torch import load_file, save_file

    store = load_file(str(nan / "store.safetensors"))
    store["bank"][0, 0] = float("nan")
    save_file(store, str(nan / "store.safetensors"))
    adapter = root / "adapter"
    adapter.mkdir()
    for f in ("adapter_config.json", "adapter_model.safetensors", "head.safetensors"):
        (adapter / f).write_text("{}")
    (adapter / "adapt.json").write_text(json.dumps({"config": {"backbone": "dinov2-s14", "colour": "red"}}))
    masks = copy_tree(cat, root / "cat_masks")
    next((masks / "ground_truth").rglob("*.png")).unlink()
    o = root / "out"
    return [
        ("corrupt PNG among good images", ["detect", folder("c1", ("broken.png", b"\x89PNG\r\n\x1a\nnope")),
                                           "--model", model, "--out", o / "c1"], 1, "broken.png", o / "c1"),
        ("truncated JPEG", ["detect", folder("c2", ("cut.jpg", jpg.read_bytes()[:300])), "--model", model,
                            "--out", o / "c2"], 1, "cut.jpg", o / "c2"),
        ("text file named .png", ["detect", folder("c3", ("notes.png", b"hello")), "--model", model,
                                  "--out", o / "c3"], 1, "not a recognised image format", o / "c3"),
        ("12000 x 9000 flat PNG (decompression bomb)", ["detect", big.parent, "--model", model, "--out", o / "c4"],
         1, "above the 40 MP limit", o / "c4"),
        ("empty folder", ["detect", empty, "--model", model, "--out", o / "c5"], 2, "holds no image files", o / "c5"),
        ("missing model folder", ["detect", images, "--model", root / "nope", "--out", o / "c6"], 2,
         "not a saved model", o / "c6"),
        ("model JSON not JSON", ["detect", images, "--model", bad_json, "--out", o / "c7"], 2, "not valid JSON",
         o / "c7"),
        ("truncated model tensors", ["detect", images, "--model", torn, "--out", o / "c8"], 2, "cannot be read",
         o / "c8"),
        ('threshold "high" in the model JSON', ["detect", images, "--model", high, "--out", o / "c9"], 2,
         "threshold must be a finite number", o / "c9"),
        ("NaN in the memory bank", ["detect", images, "--model", nan, "--out", o / "c10"], 2, "NaN", o / "c10"),
        ("misspelt option -o image_sise=128", ["fit", cat, "--out", o / "c11", "-o", "image_sise=128"], 2,
         "did you mean 'image_size'", o / "c11"),
        ("option of the wrong type -o coreset=abc", ["fit", cat, "--out", o / "c12", "-o", "coreset=abc"], 2,
         "takes int or float", o / "c12"),
        ("option out of range -o coreset=5", ["fit", cat, "--out", o / "c13", "-o", "coreset=5"], 2,
         "fraction in (0, 1]", o / "c13"),
        ("unknown key in an adapter's adapt.json", ["fit", cat, "--detector", "adapted", "--adapter", adapter,
                                                    "--out", o / "c14"], 2, "adapt.json is malformed", o / "c14"),
        ("one mask missing in eval", ["eval", masks, "--shots", "2", "-o", "image_size=96"], 0, "mask problem",
         None),
        ("unreachable LLM server, --fallback grounded", ["chat", next(images.glob("hole_*.png")), "--model", model,
                                                         "--reasoner", "openai", "--base-url",
                                                         "http://127.0.0.1:9/v1", "--fallback", "grounded",
                                                         "--ask", "where is the defect?"], 0, "grounded", None),
    ]


def hostile_report(root: Path, model: Path, images: Path) -> dict:
    names = ["a|b.png", "x\n# injected\n| row | row |.png", "<img src=x onerror=alert(1)>.png"]
    d = root / "hostile"
    d.mkdir()
    for name, src in zip(names, sorted(images.glob("*.png"))):
        (d / name).write_bytes(src.read_bytes())
    code, out, _ = cli("report", d, "--model", model, "--out", root / "out" / "hostile")
    md = (root / "out" / "hostile" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    ok = code == 0 and len(rows) == len(names) and "<img" not in md and "\n# injected" not in md
    return {"class": "hostile file names in report.md", "exit": code, "expected_exit": 0, "message_ok": ok,
            "traceback": "Traceback" in out, "half_written": 0, "lost": len(names) - len(rows), "duplicated": 0}


def kill_trials(root: Path, model: Path, images: Path, trials: int, seed: int = 0) -> dict:
    """SIGKILL a report at random moments, rerun it, count lost and duplicated records."""
    rng, lost, dup, mid = random.Random(seed), 0, 0, 0
    d = root / "many"
    d.mkdir()
    srcs = sorted(images.glob("*.png"))
    for i in range(24):
        (d / f"{i:02d}.png").write_bytes(srcs[i % len(srcs)].read_bytes())
    (d / "broken.png").write_bytes(b"nope")
    n = 25
    for t in range(trials):
        out = root / "out" / f"kill{t}"
        target = rng.randint(1, n - 1)  # kill once this many records are on disk, a random instant after
        p = subprocess.Popen([sys.executable, "-c", RUN, "report", str(d), "--model", str(model), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=os.environ | {"OMP_NUM_THREADS": "1"})
        deadline = time.time() + 120
        while p.poll() is None and time.time() < deadline and len(records(out)) < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        p.send_signal(signal.SIGKILL)
        p.wait()
        mid += 0 < len({r.get("key") for r in records(out)}) < n
        cli("report", d, "--model", model, "--out", out)
        recs = records(out)
        keys = [r["key"] for r in recs]
        lost += n - len(set(keys))
        dup += len(keys) - len(set(keys))
    return {"class": f"report killed (SIGKILL) at {trials} random moments, then rerun", "exit": 0, "expected_exit": 0,
            "message_ok": True, "traceback": False, "half_written": 0, "lost": lost, "duplicated": dup,
            "note": f"{mid} of {trials} kills landed mid-run"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=10, help="SIGKILL trials of a report")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cat, model, images = setup(root)
        for name, argv, want, text, out in cases(root, cat, model, images):
            code, output, rss = cli(*argv)
            row = {"class": name, "exit": code, "expected_exit": want, "message_ok": text in output,
                   "traceback": "Traceback" in output, "half_written": len(leftovers(out)) if out else 0,
                   "lost": 0, "duplicated": 0, "peak_rss_mb": rss}
            print(json.dumps(row), flush=True)
            rows.append(row)
        rows.append(hostile_report(root, model, images))
        rows.append(kill_trials(root, model, images, args.kills))
        print(json.dumps(rows[-1]), flush=True)
    write(rows, args)


def write(rows: list[dict], args) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps(rows, indent=2))
    passed = sum(r["exit"] == r["expected_exit"] and r["message_ok"] and not r["traceback"] and not r["half_written"]
                 and not r["lost"] and not r["duplicated"] for r in rows)
    lines = ["# Reliability: bad inputs through the command line", "",
             f"Command: `python eval/bench_reliability.py --kills {args.kills}` (a synthetic brick category at 96 px, "
             "PatchCore on efficientnet-lite0, 4 shots; every case a fresh `vlm-ad` process). Exit codes: 0 all done, "
             "1 some inputs failed, 2 usage or configuration error.", "",
             f"{passed} of {len(rows)} classes behave as specified; raw tracebacks: "
             f"{sum(r['traceback'] for r in rows)}; records lost: {sum(r['lost'] for r in rows)}, duplicated: "
             f"{sum(r['duplicated'] for r in rows)}.", "",
             "| bad input | exit (expected) | clear message | raw traceback | half-written files | lost | duplicated | "
             "peak RSS MiB | note |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        rss = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-"
        lines.append(f"| {r['class']} | {r['exit']} ({r['expected_exit']}) | {'yes' if r['message_ok'] else 'NO'} | "
                     f"{'YES' if r['traceback'] else 'no'} | {r['half_written']} | {r['lost']} | {r['duplicated']} | "
                     f"{rss} | {r.get('note', '')} |")
    (RESULTS / "reliability.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
