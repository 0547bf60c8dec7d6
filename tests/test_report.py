"""Batch reports: exactly-once records, safe resume after a kill, one writer per folder, escaped outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_ad.errors import ConfigError

pytest.importorskip("faiss")

HOSTILE = ["a|b.png", "x\n# injected\n| row | row |.png", "<img src=x onerror=alert(1)>.png", "![remote](http:e).png"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tests.conftest import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("report"), n_test_good=2, n_test_per_type=2)


def _images(cat: Path, dest: Path, names=None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    files = sorted((cat / "test").rglob("*.png"))
    for i, p in enumerate(files):
        (dest / (names[i] if names and i < len(names) else f"{p.parent.name}_{p.name}")).write_bytes(p.read_bytes())
    (dest / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return dest


def _run(images, model_dir, out, **kw):
    from vlm_ad.detectors import load_detector
    from vlm_ad.pipeline import Pipeline
    from vlm_ad.report import report_provenance, run_report

    pipe = Pipeline(load_detector(model_dir))
    return run_report(images, pipe, out, provenance=report_provenance(pipe, model_dir, "grounded"), **kw)


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "report.jsonl").read_text().splitlines() if x.strip()]


def test_rerun_retries_failures_and_replaces_their_records(model, tmp_path):
    cat, model_dir = model
    images, out = _images(cat, tmp_path / "in"), tmp_path / "out"
    n = len(list(images.iterdir()))
    first = _run(images, model_dir, out)
    assert (first.done, first.failed, first.skipped) == (n - 1, 1, 0)
    again = _run(images, model_dir, out)
    assert (again.done, again.failed, again.skipped) == (0, 1, n - 1)  # the failure is retried, the rest skipped
    lines = _lines(out)
    assert len(lines) == n and len({r["key"] for r in lines}) == n  # replaced, not appended
    assert oct((out / "report.html").stat().st_mode & 0o777) != oct(0o600)  # normal permissions, not mkstemp's


def test_torn_last_line_loses_nothing(model, tmp_path):
    cat, model_dir = model
    images, out = _images(cat, tmp_path / "in"), tmp_path / "out"
    _run(images, model_dir, out)
    lines = (out / "report.jsonl").read_text().splitlines()
    (out / "report.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # torn
    torn_ok = json.loads(lines[-1])["status"] == "ok"
    res = _run(images, model_dir, out)
    assert res.done + res.failed == 1 + torn_ok  # the torn record is redone (and the failure retried), no more
    assert len(_lines(out)) == len(lines) and len({r["key"] for r in _lines(out)}) == len(lines)


def test_another_model_or_a_second_writer_is_refused(model, tmp_path):
    from filelock import FileLock

    cat, model_dir = model
    images, out = _images(cat, tmp_path / "in"), tmp_path / "out"
    _run(images, model_dir, out)
    other = tmp_path / "other_model"
    other.mkdir()
    for f in model_dir.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    meta = json.loads((other / "detector.json").read_text())
    meta["threshold"] = 0.7
    (other / "detector.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="holds a report made by model .* --restart"):
        _run(images, other, out)
    res = _run(images, other, out, restart=True)
    assert res.skipped == 0 and json.loads((out / "report.json").read_text())["model"] == str(other)
    with FileLock(str(out / ".vlm-ad.lock")), pytest.raises(ConfigError, match="another vlm-ad run is writing"):
        _run(images, other, out)


def test_hostile_file_names_cannot_break_the_markdown(model, tmp_path):
    cat, model_dir = model
    images, out = _images(cat, tmp_path / "in", names=HOSTILE), tmp_path / "out"
    _run(images, model_dir, out)
    md = (out / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    n = len(list(images.iterdir()))
    assert len(table) == n and all(line.count(" | ") == 4 for line in table)  # 5 cells, no extra rows
    assert "<img" not in md and "\n# injected" not in md and "](http:e)" not in md
    assert not any(line.startswith("| row") for line in md.splitlines())


def test_html_stays_small_per_image_at_a_thousand_images(model, tmp_path):
    """1,000 records: pages of 100, overlays linked (lazy) rather than inlined, a few KB of HTML per image."""
    from vlm_ad.report import read_records, write_html

    cat, model_dir = model
    images, out = _images(cat, tmp_path / "in"), tmp_path / "out"
    _run(images, model_dir, out)
    real = [r for r in read_records(out / "report.jsonl") if r.ok and r.explanation.verdict == "anomalous"][0]
    many = []
    for i in range(1000):
        rec = type(real).from_json(real.to_json() | {"image_id": f"batch/{i:04d}.png", "score": real.score + i})
        many.append(rec)
    pages = write_html(many, out)
    assert [p.name for p in pages] == ["report.html"] + [f"report-{k}.html" for k in range(2, 11)]
    first = (out / "report.html").read_text()
    assert first.count("<tr>") == 101 and first.count('loading="lazy"') == 100 and "base64" not in first
    assert 'href="report-10.html"' in first and "1000 images" in first
    assert "batch/0999.png" in first and "batch/0899.png" not in first  # highest score first across pages
    assert "batch/0899.png" in (out / "report-2.html").read_text()
    per_image = sum(p.stat().st_size for p in pages) / 1000
    assert per_image < 3000, f"{per_image:.0f} bytes of HTML per image"  # was ~130 KB with inlined overlays
    write_html(many[:150], out)  # a smaller report later: stale pages go
    assert sorted(p.name for p in out.glob("report*.html")) == ["report-2.html", "report.html"]


KILL_SCRIPT = """
import sys
from vlm_ad.detectors import load_detector
from vlm_ad.pipeline import Pipeline
from vlm_ad.report import report_provenance, run_report
images, model_dir, out = sys.argv[1:4]
pipe = Pipeline(load_detector(model_dir))
run_report(images, pipe, out, provenance=report_provenance(pipe, model_dir, "grounded"))
"""


@pytest.mark.slow
@pytest.mark.parametrize("delay", [1.5, 3.0, 4.5])
def test_sigkill_at_any_moment_then_rerun_loses_and_duplicates_nothing(model, tmp_path, delay):
    cat, model_dir = model
    images, out = _images(cat, tmp_path / "in"), tmp_path / "out"
    for i in range(12):  # more images, so the kill lands mid-run
        (images / f"copy{i}.png").write_bytes(next((cat / "test" / "hole").glob("*.png")).read_bytes())
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(images), str(model_dir), str(out)],
                            env=os.environ | {"OMP_NUM_THREADS": "1"})
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = _run(images, model_dir, out)
    n = len(list(images.iterdir()))
    lines = _lines(out)
    assert len(lines) == n and len({r["key"] for r in lines}) == n, (res, len(lines))
    assert sum(r["status"] == "failed" for r in lines) == 1  # only broken.png


@pytest.mark.parametrize("size", [(2000, 20), (20, 2000), (40, 8)])
def test_thin_and_small_images_run_the_whole_chain(model, tmp_path, size):
    """Very elongated or small images (down to 8 px a side) give a map at their own size and a record; the map blur
    used to need every side longer than its radius."""
    from vlm_ad.detectors import load_detector
    from vlm_ad.pipeline import Pipeline

    w, h = size
    pixels = (np.random.default_rng(0).random((h, w, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(tmp_path / "thin.png")
    result = Pipeline(load_detector(model[1])).run(tmp_path / "thin.png")
    assert result.amap.map.shape == (h, w)
    assert np.isfinite(result.amap.map).all() and result.record().status == "ok"


def test_an_image_below_eight_pixels_a_side_is_refused_by_name(tmp_path):
    from vlm_ad.errors import DataError
    from vlm_ad.pipeline import load_sample

    Image.fromarray(np.zeros((3, 300, 3), "uint8")).save(tmp_path / "sliver.png")
    with pytest.raises(DataError, match=r"sliver\.png is 300 x 3 pixels.*at least 8"):
        load_sample(tmp_path / "sliver.png")
    with pytest.raises(ValueError, match="at least 8 pixels"):
        load_sample(np.zeros((1, 1, 3), "uint8"))
