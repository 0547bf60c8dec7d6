"""``run_report``: explain a folder of images into ``report.jsonl``, ``report.md`` and a self-contained
``report.html``. Resumable (images already in ``report.jsonl`` are skipped); one image's failure is recorded in
its record and does not stop the batch."""

from __future__ import annotations

import base64
import html
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.evidence import Namer
from vlm_ad.reasoning import Reasoner

__all__ = ["ReportSummary", "read_records", "render_html", "render_markdown", "run_report"]


@dataclass
class ReportSummary:
    """What a report run did."""

    out_dir: Path
    done: int
    skipped: int
    failed: int
    seconds: float


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a ``report.jsonl``; the last record of an image wins; a torn last line is ignored."""
    if not path.is_file():
        return []
    latest: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # an interrupted write
        latest[rec["path"]] = rec
    return list(latest.values())


def _append(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _explain_one(detector, item, stem: str, reasoner, out_dir: Path, namer, exemplar_root) -> dict[str, Any]:
    from vlm_ad.data import load_image
    from vlm_ad.explainer import _boxed, exemplar_loader, explain_map, grid_shape, overlay_png
    from vlm_ad.types import Sample

    sample = Sample(load_image(item.path), item.image_id, path=item.path)
    amap = detector.predict([sample])[0]
    ex = explain_map(amap, sample.image, reasoner, namer=namer, exemplars=exemplar_loader(exemplar_root),
                     grid=grid_shape(detector))
    rel = f"overlays/{stem}.png"
    atomic_write_bytes(out_dir / rel, _boxed(overlay_png(sample.image, amap), ex.evidence))
    return {"score": amap.score, "threshold": amap.threshold, "label": amap.label, "overlay": rel,
            "regions": ex.evidence.to_json()["regions"], "evidence": ex.evidence.to_json(),
            "explanation": ex.explanation.model_dump()}


def run_report(
    images: str | Path, detector: Any, reasoner: Reasoner, out_dir: str | Path, *, namer: Namer | None = None,
    exemplar_root: str | Path | None = None, progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> ReportSummary:
    """Explain every image under ``images`` (a folder, recursive, or one file) into ``out_dir``.

    Args:
        images: folder of images or one image.
        detector: a fitted detector (``load_detector(dir)``).
        reasoner: the reasoner (``create_reasoner(...)``).
        out_dir: where ``report.jsonl``, ``report.md``, ``report.html`` and ``overlays/`` go.
        namer: optional defect namer for the evidence.
        exemplar_root: folder the model was fitted on, so contrasts use the exemplar images.
        progress: called with 1 after each image (done, skipped or failed).
        on_total: called once with the number of images.
    """
    from vlm_ad.data import ImageFolder
    from vlm_ad.pipeline import unique_stems

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "report.jsonl"
    items = ImageFolder(images, recursive=True).items
    stems = unique_stems([Path(it.image_id.replace("/", "__")) for it in items])
    done_paths = {r["path"] for r in read_records(jsonl) if r.get("status") == "ok"}
    if on_total:
        on_total(len(items))
    t0, counts = time.perf_counter(), {"ok": 0, "skipped": 0, "failed": 0}
    for item, stem in zip(items, stems):
        if str(item.path) in done_paths:
            counts["skipped"] += 1
        else:
            rec: dict[str, Any] = {"path": str(item.path), "image_id": item.image_id}
            try:
                rec |= {"status": "ok", **_explain_one(detector, item, stem, reasoner, out, namer, exemplar_root)}
            except Exception as exc:  # noqa: BLE001 - a batch records any per-image failure and goes on
                rec |= {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                        "raw": getattr(exc, "raw", None)}
            _append(jsonl, rec)
            counts["ok" if rec["status"] == "ok" else "failed"] += 1
        if progress:
            progress(1)
    records = read_records(jsonl)
    atomic_write_bytes(out / "report.md", render_markdown(records).encode())
    atomic_write_bytes(out / "report.html", render_html(records, out).encode())
    return ReportSummary(out, counts["ok"], counts["skipped"], counts["failed"], time.perf_counter() - t0)


def _sorted(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: -(r.get("score") if r.get("score") is not None else float("-inf")))


def render_markdown(records: list[dict[str, Any]]) -> str:
    """A Markdown table (highest score first) and, per anomalous image, its reasoning steps."""
    ok = [r for r in records if r.get("status") == "ok"]
    lines = ["# vlm-ad report", "", f"{len(records)} images: {sum(r.get('label') == 1 for r in ok)} anomalous, "
             f"{len(records) - len(ok)} failed.", "", "| image | score | threshold | verdict | summary |",
             "| --- | --- | --- | --- | --- |"]
    for r in _sorted(records):
        if r.get("status") != "ok":
            lines.append(f"| {r['image_id']} | - | - | failed | {r['error']} |")
            continue
        e, thr = r["explanation"], r["threshold"]
        lines.append(f"| {r['image_id']} | {r['score']:.4f} | {'-' if thr is None else f'{thr:.4f}'} | "
                     f"{e['verdict']} | {e['summary']} |")
    for r in _sorted(ok):
        if r["explanation"]["verdict"] == "anomalous":
            lines += ["", f"## {r['image_id']}", "", f"![overlay]({r['overlay']})", ""]
            steps = r["explanation"]["steps"]
            lines += [f"{i}. {s['text']} [{', '.join(s['evidence'])}]" for i, s in enumerate(steps, 1)]
            lines += [f"- flag: {f}" for f in r["explanation"]["flags"]]
    return "\n".join(lines) + "\n"


_JS = """
function sortBy(col, numeric) {
  const tb = document.querySelector('#rows'); const rows = Array.from(tb.rows);
  const dir = tb.dataset.col == col && tb.dataset.dir == 'desc' ? 'asc' : 'desc';
  rows.sort((a, b) => { let x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
    if (numeric) { x = parseFloat(x); y = parseFloat(y); }
    return (x < y ? -1 : x > y ? 1 : 0) * (dir == 'asc' ? 1 : -1); });
  rows.forEach(r => tb.appendChild(r)); tb.dataset.col = col; tb.dataset.dir = dir;
}"""


def _img_tag(out_dir: Path, rel: str) -> str:
    path = out_dir / rel
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:220px">'


def render_html(records: list[dict[str, Any]], out_dir: Path) -> str:
    """One self-contained HTML page: overlays embedded as base64 PNG, columns sortable (score first, highest on top)."""
    rows = []
    for r in _sorted(records):
        esc = html.escape
        if r.get("status") != "ok":
            rows.append(f'<tr><td data-v="{esc(r["image_id"])}">{esc(r["image_id"])}</td><td data-v="-1e9">-</td>'
                        f'<td data-v="failed">failed</td><td></td><td data-v="">{esc(r["error"])}</td></tr>')
            continue
        e = r["explanation"]
        steps = "".join(f"<li>{esc(s['text'])} <small>[{esc(', '.join(s['evidence']))}]</small></li>"
                        for s in e["steps"])
        flags = "".join(f"<li class=flag>{esc(f)}</li>" for f in e["flags"])
        rows.append(f'<tr><td data-v="{esc(r["image_id"])}">{esc(r["image_id"])}</td>'
                    f'<td data-v="{r["score"]}">{r["score"]:.4f}</td><td data-v="{e["verdict"]}">{e["verdict"]}'
                    f' ({e["confidence"]:.2f})</td><td>{_img_tag(out_dir, r["overlay"])}</td>'
                    f'<td data-v=""><b>{esc(e["summary"])}</b><details><summary>reasoning</summary><ol>{steps}</ol>'
                    f'<ul>{flags}</ul></details></td></tr>')
    head = ("<tr><th onclick=\"sortBy(0,false)\">image</th><th onclick=\"sortBy(1,true)\">score &#x25BE;</th>"
            "<th onclick=\"sortBy(2,false)\">verdict</th><th>overlay</th><th>explanation</th></tr>")
    return ("<!doctype html><html><head><meta charset=utf-8><title>vlm-ad report</title><style>"
            "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;"
            "vertical-align:top}th{cursor:pointer;background:#eee}.flag{color:#b00}</style>"
            f"<script>{_JS}</script></head><body><h1>vlm-ad report</h1><p>{len(records)} images; click a column "
            f"header to sort.</p><table><thead>{head}</thead><tbody id=rows data-col=1 data-dir=desc>{''.join(rows)}"
            "</tbody></table></body></html>")
