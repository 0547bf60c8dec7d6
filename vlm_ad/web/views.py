"""What the web page shows, as plain JSON: an :class:`~vlm_ad.pipeline.Explained` image (pictures as PNG data URLs,
each region next to the normal exemplar window it was contrasted with) and the rows of a report folder.

No FastAPI here: these functions are tested on their own and the app only routes to them.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlm_ad.pipeline import Explained, Pipeline, Record

__all__ = ["ReportFolder", "analysis_json", "data_url", "exemplar_window", "record_row"]

#: longest side of the pictures sent to the page (the analysis runs on the full image)
DISPLAY_SIDE = 1024
#: smallest crop side shown for a region or its exemplar window, so small regions stay visible
MIN_CROP = 24


def data_url(pixels: np.ndarray, *, max_side: int = DISPLAY_SIDE) -> str:
    """A ``data:image/png`` URL of an (H, W, 3) uint8 image, downscaled to ``max_side`` when larger."""
    from vlm_ad.viz import png_bytes

    im = Image.fromarray(np.ascontiguousarray(pixels))
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    return "data:image/png;base64," + base64.b64encode(png_bytes(np.asarray(im))).decode()


def _window(h: int, w: int, cy: float, cx: float, hh: float, hw: float) -> tuple[slice, slice]:
    hh, hw = max(hh, MIN_CROP / 2), max(hw, MIN_CROP / 2)
    y0, y1 = int(max(0, math.floor(cy - hh))), int(min(h, math.ceil(cy + hh)))
    x0, x1 = int(max(0, math.floor(cx - hw))), int(min(w, math.ceil(cx + hw)))
    return slice(y0, y1), slice(x0, x1)


def region_crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The region's box with a quarter of its size as margin on each side (at least :data:`MIN_CROP` px)."""
    x0, y0, x1, y1 = box
    ys, xs = _window(*image.shape[:2], (y0 + y1) / 2, (x0 + x1) / 2, 0.75 * (y1 - y0), 0.75 * (x1 - x0))
    return image[ys, xs]


def exemplar_window(exemplar: np.ndarray, row: int, col: int, grid: tuple[int, int],
                    box_frac: tuple[float, float]) -> np.ndarray:
    """The exemplar's window that a region was contrasted with (see :mod:`vlm_ad.evidence.build`): the region's
    relative size, centred on the hit's patch ``(row, col)`` of a ``grid`` (rows, cols), with the same margin as
    :func:`region_crop`."""
    h, w = exemplar.shape[:2]
    cy, cx = (row + 0.5) / grid[0] * h, (col + 0.5) / grid[1] * w
    ys, xs = _window(h, w, cy, cx, 0.75 * box_frac[0] * h, 0.75 * box_frac[1] * w)
    return exemplar[ys, xs]


def _exemplar_for(pipeline: Pipeline, ex: Explained, k: int, box: tuple[int, int, int, int]) -> dict[str, Any]:
    """Region ``R<k+1>``'s reference: the hit it was contrasted with and that exemplar's window, or why there is
    no picture."""
    hits = ex.evidence.exemplars
    if not hits:
        return {"id": None, "reason": "the detector returned no nearest normal exemplar"}
    hit = hits[min(k, len(hits) - 1)]
    out: dict[str, Any] = {"id": hit.id, "image_id": hit.image_id, "distance": hit.distance, "picture": None}
    pixels = pipeline.exemplars(hit.image_id) if pipeline.exemplars is not None else None
    grid = getattr(pipeline.detector, "grid_shape", None)
    if pixels is None or grid is None:
        out["reason"] = ("exemplar images not available: start the server with --exemplars DIR (the folder the model "
                         "was fitted on)" if pipeline.exemplars is None else f"{hit.image_id} cannot be read")
        return out
    grid = grid(pixels.shape[:2]) if callable(grid) else grid
    h, w = ex.image.shape[:2]
    frac = ((box[3] - box[1]) / h, (box[2] - box[0]) / w)
    out["picture"] = data_url(exemplar_window(pixels, hit.row, hit.col, grid, frac))
    return out


def analysis_json(ex: Explained, pipeline: Pipeline, *, session: str) -> dict[str, Any]:
    """Everything the page shows about one explained image."""
    e, ev = ex.explanation, ex.evidence
    regions = []
    for k, r in enumerate(ev.regions):
        regions.append({
            "id": r.id, "box": list(r.box), "location": r.location, "area_pct": r.area_pct, "peak": r.peak,
            "shape": r.shape.description, "contrast": r.contrast.words, "reference": r.contrast.reference,
            "defect": None if r.defect is None else r.defect.name,
            "picture": data_url(region_crop(ex.image, r.box)), "exemplar": _exemplar_for(pipeline, ex, k, r.box)})
    h, w = ex.image.shape[:2]
    return {"session": session, "image_id": ev.image_id, "width": w, "height": h,
            "image": data_url(ex.image), "overlay": data_url(ex.overlay()),
            "score": ev.score.score, "threshold": ev.score.threshold, "verdict": e.verdict,
            "confidence": e.confidence, "defect_type": e.defect_type, "location": e.location, "summary": e.summary,
            "steps": [{"text": s.text, "evidence": list(s.evidence)} for s in e.steps], "flags": list(e.flags),
            "reasoner": e.reasoner, "regions": regions, "notes": list(ev.notes)}


# ------------------------------------------------------------------------------------------------- report folders
def record_row(index: int, r: Record) -> dict[str, Any]:
    """One line of the report table."""
    e = r.explanation
    return {"index": index, "image_id": r.image_id, "status": r.status, "score": r.score,
            "verdict": "failed" if not r.ok or e is None else e.verdict,
            "confidence": None if e is None else e.confidence, "summary": r.error if e is None else e.summary,
            "flags": 0 if e is None else len(e.flags)}


SORTS = ("score_desc", "score_asc", "name")
VERDICTS = ("all", "anomalous", "normal", "failed")


@dataclass
class ReportFolder:
    """A folder written by ``vlm-ad report``, read from its ``report.jsonl`` and ``report.json`` (JSON only) and
    re-read when the JSONL changes (a report still running can be browsed)."""

    root: Path
    _stamp: tuple[float, int] | None = field(default=None, repr=False)
    _records: list[Record] = field(default_factory=list, repr=False)

    def records(self) -> list[Record]:
        from vlm_ad.report import read_records

        jsonl = self.root / "report.jsonl"
        stat = jsonl.stat() if jsonl.is_file() else None
        stamp = None if stat is None else (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            self._records, self._stamp = read_records(jsonl), stamp
        return self._records

    def provenance(self) -> dict[str, Any]:
        path = self.root / "report.json"
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def rows(self, *, verdict: str = "all", sort: str = "score_desc", offset: int = 0, limit: int = 50
             ) -> dict[str, Any]:
        """The table's rows: filtered by verdict, sorted, one page of them."""
        rows = [record_row(i, r) for i, r in enumerate(self.records())]
        counts = {v: sum(x["verdict"] == v for x in rows) for v in VERDICTS[1:]}
        if verdict != "all":
            rows = [x for x in rows if x["verdict"] == verdict]
        if sort == "name":
            rows.sort(key=lambda x: x["image_id"])
        else:
            sign = -1 if sort == "score_desc" else 1
            rows.sort(key=lambda x: (x["score"] is None, sign * (x["score"] or 0.0)))
        return {"total": len(self.records()), "counts": counts, "matched": len(rows), "offset": offset,
                "rows": rows[offset:offset + limit], "provenance": self.provenance()}

    def record(self, index: int) -> dict[str, Any] | None:
        """One record as stored (``report.jsonl``), plus the URL of its overlay file; None when out of range."""
        recs = self.records()
        if not 0 <= index < len(recs):
            return None
        r = recs[index]
        out = r.to_json() | {"index": index}
        out["overlay_url"] = f"/report/files/{r.overlay}" if r.overlay and (self.root / r.overlay).is_file() else None
        return out

    def file(self, rel: str) -> Path | None:
        """A PNG under ``overlays/`` of the folder, or None (never a path outside it)."""
        base = (self.root / "overlays").resolve()
        path = (self.root / rel).resolve()
        if path.suffix.lower() != ".png" or not path.is_relative_to(base) or not path.is_file():
            return None
        return path
