"""``run_report``: explain a folder of images into ``report.jsonl``, ``report.md`` and ``report.html``, exactly
once per image.

* Every record has a key: the image's id and content hash plus the run's identity (the model folder's fingerprint
  and the reasoner). A rerun skips keys that succeeded, retries failures and *replaces* their records.
* Records are appended (and fsynced) one by one while the run goes, so a run killed at any moment loses at most the
  image it was on; at the end ``report.jsonl`` is rewritten with one record per key, and ``report.md`` and
  ``report.html`` are rebuilt from it, so they never disagree with it.
* The HTML stays usable at thousands of images: overlays are linked files under ``overlays/`` loaded lazily (the
  folder is the report: move it whole), and past :data:`HTML_PAGE_SIZE` records the pages are split
  (``report.html``, ``report-2.html``, ...), highest score first.
* ``report.json`` records the provenance (model, its fingerprint, detector, backbone, threshold, reasoner, vlm-ad
  version, date). A folder made by another model or reasoner is refused unless ``restart=True``.
* One run at a time per folder: a second one is refused with a clear message (a lock file), never interleaved.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote

from vlm_ad._cache import atomic_write_bytes
from vlm_ad._writer import BackgroundWriter
from vlm_ad.errors import ConfigError
from vlm_ad.pipeline import Pipeline, Record, unique_stems

if TYPE_CHECKING:
    from vlm_ad.engines import Computed, Engine

__all__ = ["HTML_PAGE_SIZE", "ReportSummary", "html_page_name", "report_provenance", "read_records", "render_html",
           "render_markdown", "run_report", "write_html"]

REPORT_FORMAT = 1  # of report.json


@dataclass
class ReportSummary:
    """What a report run did."""

    out_dir: Path
    done: int
    skipped: int
    failed: int
    seconds: float


def report_provenance(pipeline: Pipeline, model_dir: str | Path | None = None, reasoner: str | None = None
                      ) -> dict[str, Any]:
    """Where a report's records come from: the model folder and its fingerprint, detector, backbone, threshold,
    reasoner, vlm-ad version and date. Its ``identity`` (model fingerprint + reasoner) keys the records."""
    from vlm_ad import __version__
    from vlm_ad.artifacts import fingerprint

    det = pipeline.detector
    reasoner = reasoner or getattr(pipeline.reasoner, "name", "reasoner")
    model_hash = fingerprint(model_dir) if model_dir is not None else None
    return {"model": None if model_dir is None else str(model_dir), "model_sha256": model_hash,
            "detector": getattr(det, "name", None), "backbone": str(getattr(det, "backbone", "")),
            "threshold": getattr(det, "threshold_", None), "reasoner": reasoner, "vlm_ad": __version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "identity": f"{model_hash or 'in-memory model'}|{reasoner}"}


def _key(image_id: str, path: Path, identity: str) -> str:
    digest = hashlib.sha256()
    digest.update(f"{identity}\0{image_id}\0".encode())
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:  # an unreadable file still gets one record (its failure), keyed by its name
        digest.update(f"unreadable: {exc}".encode())
    return digest.hexdigest()[:32]


def read_records(path: Path) -> list[Record]:
    """Records of a ``report.jsonl``, one per key (the last one wins), in first-seen order; torn lines are ignored."""
    if not path.is_file():
        return []
    latest: dict[str, Record] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = Record.from_json(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            continue  # an interrupted write
        latest[rec.key or rec.path or rec.image_id] = rec
    return list(latest.values())


def _append(path: Path, record: Record) -> None:
    with open(path, "ab+") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell():  # a run killed mid-line left a torn last line: start on a line of our own
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write((json.dumps(record.to_json()) + "\n").encode())
        fh.flush()
        os.fsync(fh.fileno())


def _lock(out: Path):
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / ".vlm-ad.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"another vlm-ad run is writing to {out} (it holds {out / '.vlm-ad.lock'}); wait for it "
                          "to finish or choose another --out") from None
    return lock


def _check_manifest(out: Path, prov: dict[str, Any], restart: bool) -> None:
    """Refuse to mix records of two models or reasoners in one folder; write the manifest for this run."""
    from vlm_ad.artifacts import read_meta, write_meta

    manifest, jsonl = out / "report.json", out / "report.jsonl"
    if manifest.is_file() and not restart:
        old = read_meta(manifest, kind="report", version=REPORT_FORMAT, remedy="use another --out, or --restart")
        if old.get("identity") != prov["identity"]:
            raise ConfigError(
                f"{out} holds a report made by model {old.get('model')} (sha256 {str(old.get('model_sha256'))[:12]}) "
                f"with reasoner {old.get('reasoner')}; this run uses model {prov['model']} (sha256 "
                f"{str(prov['model_sha256'])[:12]}) with reasoner {prov['reasoner']}. Use another --out, or --restart "
                "to replace that report")
    elif jsonl.is_file() and not restart and read_records(jsonl):
        raise ConfigError(f"{out} holds a report.jsonl without its report.json (made by an older vlm-ad or by hand), "
                          "so it cannot be told which model made it; use another --out, or --restart to replace it")
    if restart:
        jsonl.unlink(missing_ok=True)
    write_meta(manifest, kind="report", version=REPORT_FORMAT, meta=prov)


def run_report(
    images: str | Path, pipeline: Pipeline, out_dir: str | Path, *, provenance: dict[str, Any] | None = None,
    restart: bool = False, progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None, engine: Engine | None = None,
) -> ReportSummary:
    """Explain every image under ``images`` (a folder, recursive, or one file) into ``out_dir``, once per image.

    Args:
        images: folder of images or one image.
        pipeline: the detector, reasoner, namer and exemplar images to run (:class:`~vlm_ad.pipeline.Pipeline`).
        out_dir: where ``report.jsonl``, ``report.json``, ``report.md``, ``report.html`` and ``overlays/`` go.
        provenance: the run's :func:`report_provenance` (default: from the pipeline alone, no model fingerprint).
        restart: replace a report made by another model or reasoner instead of refusing.
        progress: called with 1 after each image (done, skipped or failed).
        on_total: called once with the number of images.
        engine: who computes the records (:mod:`vlm_ad.engines`; default: ``pipeline`` in this process). Keys, the
            manifest, the lock, writing and compaction stay here whatever the engine; it is closed at the end.

    Raises:
        ConfigError: another run holds the folder, or the folder holds another model's or reasoner's report.
    """
    from vlm_ad.data import ImageFolder
    from vlm_ad.engines import LocalEngine, WorkItem, explain_item

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = ImageFolder(images, recursive=True).items
    prov = provenance or report_provenance(pipeline)
    engine = engine or LocalEngine(pipeline)
    lock = _lock(out)
    try:
        _check_manifest(out, prov, restart)
        jsonl = out / "report.jsonl"
        stems = unique_stems([Path(it.image_id.replace("/", "__")) for it in items])
        work = [WorkItem(it.image_id, str(it.path), stem, _key(it.image_id, it.path, prov["identity"]))
                for it, stem in zip(items, stems)]
        done = {r.key for r in read_records(jsonl) if r.ok}
        if on_total:
            on_total(len(items))
        t0, counts = time.perf_counter(), {"ok": 0, "skipped": 0, "failed": 0}
        todo = [w for w in work if w.key not in done]
        counts["skipped"] = len(work) - len(todo)
        if progress and counts["skipped"]:
            progress(counts["skipped"])
        # one thread: records are appended in turn; an interrupt still writes the records already computed
        with BackgroundWriter(1, name="vlm-ad-report", finish_on_error=True) as writer:
            for res in engine.map(explain_item, todo):
                writer.submit(_record, out, jsonl, res, counts)
                if progress:
                    progress(1)
        _compact(out, [w.key for w in work])
    finally:
        try:
            engine.close()
        finally:
            lock.release()
    return ReportSummary(out, counts["ok"], counts["skipped"], counts["failed"], time.perf_counter() - t0)


def _record(out: Path, jsonl: Path, res: Computed, counts: dict[str, int]) -> None:
    """Write one computed image (overlay, then its line in ``jsonl``) and count it; runs in the writer thread."""
    rec = _write(out, res)
    _append(jsonl, rec)
    counts["ok" if rec.ok else "failed"] += 1


def _write(out: Path, res: Computed) -> Record:
    """The record of one computed image, its overlay written first (a record never names a missing overlay)."""
    rec = Record.from_json(res.record)
    if res.overlay_png is not None and rec.overlay:
        try:
            atomic_write_bytes(out / rec.overlay, res.overlay_png)
        except OSError as exc:
            rec = Record.failed(rec.image_id, rec.path, exc)
            rec.key = res.item.key
    return rec


def _compact(out: Path, order: list[str | None]) -> None:
    """One record per key in ``report.jsonl`` (this run's images in input order, then any others), and the Markdown
    and HTML rebuilt from it."""
    jsonl = out / "report.jsonl"
    rank = {key: i for i, key in enumerate(order)}
    records = sorted(read_records(jsonl), key=lambda r: rank.get(r.key, len(rank)))
    atomic_write_bytes(jsonl, "".join(json.dumps(r.to_json()) + "\n" for r in records).encode())
    atomic_write_bytes(out / "report.md", render_markdown(records).encode())
    write_html(records, out)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#!|~])")


def _md(text: Any) -> str:
    """User-derived text made inert in a Markdown table cell: no table breaks, headings, links, images or HTML."""
    flat = " ".join(str(text).split())  # newlines would start new rows or headings
    return _MD_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))


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
            lines.append(f"| {_md(r.image_id)} | - | - | failed | {_md(r.error)} |")
            continue
        thr = "-" if r.threshold is None else f"{r.threshold:.4f}"
        lines.append(f"| {_md(r.image_id)} | {r.score:.4f} | {thr} | {r.explanation.verdict} | "
                     f"{_md(r.explanation.summary)} |")
    for r in _sorted(ok):
        e = r.explanation
        if e is not None and e.verdict == "anomalous":
            lines += ["", f"## {_md(r.image_id)}", "", f"![overlay](<{quote(r.overlay or '')}>)", ""]
            lines += [f"{i}. {_md(st.text)} \\[{_md(', '.join(st.evidence))}\\]" for i, st in enumerate(e.steps, 1)]
            lines += [f"- flag: {_md(f)}" for f in e.flags]
    return "\n".join(lines) + "\n"


_JS = """
function sortBy(col, numeric) {
  const tb = document.querySelector('#rows'); const rows = Array.from(tb.rows);
  const dir = tb.dataset.col == col && tb.dataset.dir == 'desc' ? 'asc' : 'desc';
  rows.sort((a, b) => { let x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
    if (numeric) { x = parseFloat(x); y = parseFloat(y); }
    return (x < y ? -1 : x > y ? 1 : 0) * (dir == 'asc' ? 1 : -1); });
  rows.forEach(r => tb.appendChild(r)); tb.dataset.col = col; tb.dataset.dir = dir;
}
function filterBy(verdict) {
  Array.from(document.querySelector('#rows').rows).forEach(r => {
    r.hidden = verdict != 'all' && r.cells[2].dataset.v != verdict; });
}"""

#: records per HTML page: a page stays small and quick to open however large the batch
HTML_PAGE_SIZE = 100


def html_page_name(page: int) -> str:
    """File name of HTML page ``page`` (1-based): ``report.html``, ``report-2.html``, ..."""
    return "report.html" if page == 1 else f"report-{page}.html"


def _img_tag(out_dir: Path | None, rel: str) -> str:
    """A link to the overlay file (never inlined), loaded only when scrolled into view."""
    if not rel or (out_dir is not None and not (out_dir / rel).is_file()):
        return ""
    src = html.escape(quote(rel))
    return f'<a href="{src}"><img src="{src}" loading="lazy" decoding="async" width="220" alt="overlay"></a>'


def _row(r: Record, out_dir: Path | None) -> str:
    esc = html.escape
    if not r.ok or r.explanation is None:
        return (f'<tr><td data-v="{esc(r.image_id)}">{esc(r.image_id)}</td><td data-v="-1e9">-</td>'
                f'<td data-v="failed">failed</td><td></td><td data-v="">{esc(str(r.error))}</td></tr>')
    e = r.explanation
    steps = "".join(f"<li>{esc(st.text)} <small>[{esc(', '.join(st.evidence))}]</small></li>" for st in e.steps)
    flags = "".join(f"<li class=flag>{esc(f)}</li>" for f in e.flags)
    return (f'<tr><td data-v="{esc(r.image_id)}">{esc(r.image_id)}</td>'
            f'<td data-v="{r.score}">{r.score:.4f}</td><td data-v="{e.verdict}">{e.verdict}'
            f' ({e.confidence:.2f})</td><td>{_img_tag(out_dir, r.overlay or "")}</td>'
            f'<td data-v=""><b>{esc(e.summary)}</b><details><summary>reasoning</summary><ol>{steps}</ol>'
            f'<ul>{flags}</ul></details></td></tr>')


def _nav(page: int, pages: int) -> str:
    if pages == 1:
        return ""
    links = [f"<b>{k}</b>" if k == page else f'<a href="{html_page_name(k)}">{k}</a>' for k in range(1, pages + 1)]
    return f"<p class=nav>page {' '.join(links)}</p>"


def render_html(records: list[Record], out_dir: Path | None = None, *, page: int = 1,
                page_size: int = HTML_PAGE_SIZE) -> str:
    """HTML page ``page`` of a report: its share of the records, highest score first across all pages, overlays
    linked as files under ``overlays/`` (loaded lazily, never inlined), columns sortable and a verdict filter
    within the page, links to the other pages. ``out_dir``: leave out overlays whose file is missing there."""
    ordered = _sorted(records)
    pages = max(1, -(-len(ordered) // page_size))
    if not 1 <= page <= pages:
        raise ValueError(f"page must be in 1..{pages}, got {page}")
    chunk = ordered[(page - 1) * page_size: page * page_size]
    ok = [r for r in records if r.ok]
    counts = (f"{len(records)} images: {sum(r.label == 1 for r in ok)} anomalous, {len(records) - len(ok)} failed; "
              f"this page shows {len(chunk)} of them (ranks {(page - 1) * page_size + 1}-"
              f"{(page - 1) * page_size + len(chunk)} by score).")
    head = ("<tr><th onclick=\"sortBy(0,false)\">image</th><th onclick=\"sortBy(1,true)\">score &#x25BE;</th>"
            "<th onclick=\"sortBy(2,false)\">verdict</th><th>overlay</th><th>explanation</th></tr>")
    verdicts = "".join(f"<option>{v}</option>" for v in ("all", "anomalous", "normal", "failed"))
    nav = _nav(page, pages)
    return ("<!doctype html><html><head><meta charset=utf-8><title>vlm-ad report</title><style>"
            "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;"
            "vertical-align:top}th{cursor:pointer;background:#eee}.flag{color:#b00}img{max-width:220px}</style>"
            f"<script>{_JS}</script></head><body><h1>vlm-ad report</h1><p>{counts} Click a column header to sort "
            "this page; show <select onchange=\"filterBy(this.value)\">"
            f"{verdicts}</select>.</p>{nav}<table><thead>{head}</thead><tbody id=rows data-col=1 data-dir=desc>"
            f"{''.join(_row(r, out_dir) for r in chunk)}</tbody></table>{nav}</body></html>")


def write_html(records: list[Record], out_dir: str | Path, *, page_size: int = HTML_PAGE_SIZE) -> list[Path]:
    """Write ``report.html`` (and ``report-2.html``, ... past ``page_size`` records) into ``out_dir``; pages left
    over from a larger earlier report are removed. Returns the pages written."""
    out = Path(out_dir)
    pages = max(1, -(-len(records) // page_size))
    written = []
    for page in range(1, pages + 1):
        path = out / html_page_name(page)
        atomic_write_bytes(path, render_html(records, out, page=page, page_size=page_size).encode())
        written.append(path)
    for stale in out.glob("report-*.html"):
        m = re.fullmatch(r"report-(\d+)\.html", stale.name)
        if m and int(m.group(1)) > pages:
            stale.unlink(missing_ok=True)
    return written
