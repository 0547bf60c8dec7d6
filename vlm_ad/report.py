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
from vlm_ad.pipeline import Pipeline, Record, unique_stems
from vlm_ad.types import Sample

__all__ = ["ReportSummary", "read_records", "render_html", "render_markdown", "run_report"]


@dataclass
class ReportSummary:
    """What a report run did."""

    out_dir: Path
    done: int
    skipped: int
    failed: int
    seconds: float


def read_records(path: Path) -> list[Record]:
    """Records of a ``report.jsonl``; the last record of an image wins; a torn last line is ignored."""
    if not path.is_file():
        return []
    latest: dict[str, Record] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = Record.from_json(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # an interrupted write
        latest[rec.path or rec.image_id] = rec
    return list(latest.values())


def _append(path: Path, record: Record) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record.to_json()) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _explain_one(pipeline: Pipeline, item: Any, stem: str, out_dir: Path) -> Record:
    from vlm_ad.data import load_image
    from vlm_ad.viz import png_bytes

    explained = pipeline.run(Sample(load_image(item.path), item.image_id, path=item.path))
    rel = f"overlays/{stem}.png"
    atomic_write_bytes(out_dir / rel, png_bytes(explained.overlay()))
    return explained.record(path=item.path, overlay=rel)


def run_report(
    images: str | Path, pipeline: Pipeline, out_dir: str | Path, *, progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> ReportSummary:
    """Explain every image under ``images`` (a folder, recursive, or one file) into ``out_dir``.

    Args:
        images: folder of images or one image.
        pipeline: the detector, reasoner, namer and exemplar images to run (:class:`~vlm_ad.pipeline.Pipeline`).
        out_dir: where ``report.jsonl``, ``report.md``, ``report.html`` and ``overlays/`` go.
        progress: called with 1 after each image (done, skipped or failed).
        on_total: called once with the number of images.
    """
    from vlm_ad.data import ImageFolder

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "report.jsonl"
    items = ImageFolder(images, recursive=True).items
    stems = unique_stems([Path(it.image_id.replace("/", "__")) for it in items])
    done_paths = {r.path for r in read_records(jsonl) if r.ok}
    if on_total:
        on_total(len(items))
    t0, counts = time.perf_counter(), {"ok": 0, "skipped": 0, "failed": 0}
    for item, stem in zip(items, stems):
        if str(item.path) in done_paths:
            counts["skipped"] += 1
        else:
            try:
                rec = _explain_one(pipeline, item, stem, out)
            except Exception as exc:  # noqa: BLE001 - a batch records any per-image failure and goes on
                rec = Record.failed(item.image_id, str(item.path), exc)
            _append(jsonl, rec)
            counts["ok" if rec.ok else "failed"] += 1
        if progress:
            progress(1)
    records = read_records(jsonl)
    atomic_write_bytes(out / "report.md", render_markdown(records).encode())
    atomic_write_bytes(out / "report.html", render_html(records, out).encode())
    return ReportSummary(out, counts["ok"], counts["skipped"], counts["failed"], time.perf_counter() - t0)


def _sorted(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: -(r.score if r.score is not None else float("-inf")))


def render_markdown(records: list[Record]) -> str:
    """A Markdown table (highest score first) and, per anomalous image, its reasoning steps."""
    ok = [r for r in records if r.ok]
    lines = ["# vlm-ad report", "", f"{len(records)} images: {sum(r.label == 1 for r in ok)} anomalous, "
             f"{len(records) - len(ok)} failed.", "", "| image | score | threshold | verdict | summary |",
             "| --- | --- | --- | --- | --- |"]
    for r in _sorted(records):
        if not r.ok or r.explanation is None:
            lines.append(f"| {r.image_id} | - | - | failed | {r.error} |")
            continue
        thr = "-" if r.threshold is None else f"{r.threshold:.4f}"
        lines.append(f"| {r.image_id} | {r.score:.4f} | {thr} | {r.explanation.verdict} | {r.explanation.summary} |")
    for r in _sorted(ok):
        e = r.explanation
        if e is not None and e.verdict == "anomalous":
            lines += ["", f"## {r.image_id}", "", f"![overlay]({r.overlay})", ""]
            lines += [f"{i}. {st.text} [{', '.join(st.evidence)}]" for i, st in enumerate(e.steps, 1)]
            lines += [f"- flag: {f}" for f in e.flags]
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
    if not rel or not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:220px">'


def render_html(records: list[Record], out_dir: Path) -> str:
    """One self-contained HTML page: overlays embedded as base64 PNG, columns sortable (score first, highest on top)."""
    esc = html.escape
    rows = []
    for r in _sorted(records):
        if not r.ok or r.explanation is None:
            rows.append(f'<tr><td data-v="{esc(r.image_id)}">{esc(r.image_id)}</td><td data-v="-1e9">-</td>'
                        f'<td data-v="failed">failed</td><td></td><td data-v="">{esc(str(r.error))}</td></tr>')
            continue
        e = r.explanation
        steps = "".join(f"<li>{esc(st.text)} <small>[{esc(', '.join(st.evidence))}]</small></li>" for st in e.steps)
        flags = "".join(f"<li class=flag>{esc(f)}</li>" for f in e.flags)
        rows.append(f'<tr><td data-v="{esc(r.image_id)}">{esc(r.image_id)}</td>'
                    f'<td data-v="{r.score}">{r.score:.4f}</td><td data-v="{e.verdict}">{e.verdict}'
                    f' ({e.confidence:.2f})</td><td>{_img_tag(out_dir, r.overlay or "")}</td>'
                    f'<td data-v=""><b>{esc(e.summary)}</b><details><summary>reasoning</summary><ol>{steps}</ol>'
                    f'<ul>{flags}</ul></details></td></tr>')
    head = ("<tr><th onclick=\"sortBy(0,false)\">image</th><th onclick=\"sortBy(1,true)\">score &#x25BE;</th>"
            "<th onclick=\"sortBy(2,false)\">verdict</th><th>overlay</th><th>explanation</th></tr>")
    return ("<!doctype html><html><head><meta charset=utf-8><title>vlm-ad report</title><style>"
            "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;"
            "vertical-align:top}th{cursor:pointer;background:#eee}.flag{color:#b00}</style>"
            f"<script>{_JS}</script></head><body><h1>vlm-ad report</h1><p>{len(records)} images; click a column "
            f"header to sort.</p><table><thead>{head}</thead><tbody id=rows data-col=1 data-dir=desc>{''.join(rows)}"
            "</tbody></table></body></html>")
