"""Library functions behind ``vlm-ad chat`` and ``vlm-ad report``: detect -> evidence -> explanation.

::

    from vlm_ad.detectors import load_detector
    from vlm_ad.explainer import explain_image
    from vlm_ad.reasoning import create_reasoner

    res = explain_image(load_detector("models/tile"), "part.png", create_reasoner("grounded"))
    print(res.explanation.summary)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.evidence import Evidence, Namer, build_evidence
from vlm_ad.reasoning import Explanation, Reasoner
from vlm_ad.types import AnomalyMap, Sample

__all__ = ["ChatSession", "Explained", "exemplar_loader", "explain_image", "explain_map", "grid_shape", "overlay_png"]


@dataclass
class Explained:
    """One image through the whole chain: the map, the evidence and the explanation."""

    image: np.ndarray = field(repr=False)
    amap: AnomalyMap = field(repr=False)
    evidence: Evidence
    explanation: Explanation


def exemplar_loader(root: str | Path | None) -> Callable[[str], np.ndarray | None] | None:
    """``image_id -> pixels or None`` reading exemplar ids relative to ``root`` (the folder the model was fitted
    on); None when ``root`` is None. Unreadable or missing files give None (the evidence then uses the ring)."""
    if root is None:
        return None
    from vlm_ad.data import load_image
    from vlm_ad.errors import DataError

    cache: dict[str, np.ndarray | None] = {}

    def load(image_id: str) -> np.ndarray | None:
        if image_id not in cache:
            path = Path(root) / image_id
            try:
                cache[image_id] = load_image(path) if path.is_file() else None
            except DataError:
                cache[image_id] = None
        return cache[image_id]

    return load


def grid_shape(detector: Any) -> tuple[int, int] | None:
    """(rows, cols) of a detector's patch grid (one tiny forward pass, cached on the detector)."""
    if getattr(detector, "_grid_shape_", None) is None:
        try:
            size = detector.embedder.image_size
            emb = detector.embedder([np.zeros((size, size, 3), np.uint8)])
            detector._grid_shape_ = (int(emb.shape[1]), int(emb.shape[2]))
        except AttributeError:
            return None
    return detector._grid_shape_


def explain_map(amap: AnomalyMap, image: np.ndarray, reasoner: Reasoner, *, namer: Namer | None = None,
                exemplars: Callable[[str], np.ndarray | None] | None = None,
                grid: tuple[int, int] | None = None) -> Explained:
    """Evidence and explanation of an existing detection."""
    ev = build_evidence(amap, image, namer=namer, load_exemplar=exemplars, grid_shape=grid)
    return Explained(image, amap, ev, reasoner.explain(ev))


def explain_image(detector: Any, image: str | Path | np.ndarray | Sample, reasoner: Reasoner, *,
                  namer: Namer | None = None, exemplar_root: str | Path | None = None) -> Explained:
    """Detect, measure and explain one image (a path, an RGB array or a Sample)."""
    from vlm_ad.data import load_image

    if isinstance(image, (str, Path)):
        sample = Sample(load_image(image), Path(image).name, path=Path(image))
    elif isinstance(image, Sample):
        sample = image
    else:
        sample = Sample(np.asarray(image), "image")
    amap = detector.predict([sample])[0]
    return explain_map(amap, sample.image, reasoner, namer=namer, exemplars=exemplar_loader(exemplar_root),
                       grid=grid_shape(detector))


def overlay_png(image: np.ndarray, amap: AnomalyMap) -> bytes:
    """PNG bytes of the map over the image, with the regions' boxes drawn (scaled like ``vlm-ad detect``)."""
    import io

    from PIL import Image

    from vlm_ad.viz import overlay

    thr = amap.threshold
    vmax = max(float(thr) * 1.5 if thr else float(amap.map.max()), 1e-6)
    im = Image.fromarray(overlay(image, amap.map, vmin=0.0, vmax=vmax))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _boxed(png: bytes, evidence: Evidence) -> bytes:
    import io

    from PIL import Image, ImageDraw

    im = Image.open(io.BytesIO(png)).convert("RGB")
    draw = ImageDraw.Draw(im)
    for r in evidence.regions:
        draw.rectangle([r.box[0], r.box[1], r.box[2] - 1, r.box[3] - 1], outline=(0, 255, 255))
        draw.text((r.box[0] + 2, r.box[1] + 1), r.id, fill=(0, 255, 255))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


class ChatSession:
    """A multi-turn conversation about one explained image.

    Args:
        explained: the image's map, evidence and explanation.
        reasoner: answers the questions (grounded or an LLM).
    """

    def __init__(self, explained: Explained, reasoner: Reasoner) -> None:
        self.explained, self.reasoner = explained, reasoner
        self.history: list[tuple[str, str]] = []

    def ask(self, question: str) -> str:
        """Answer ``question`` with the earlier turns as context; the turn is added to ``history``."""
        answer = self.reasoner.answer(self.explained.evidence, question, self.history)
        self.history.append((question, answer))
        return answer

    def save(self, out_dir: str | Path, stem: str = "chat") -> list[Path]:
        """Write ``<stem>_transcript.json``, ``<stem>_transcript.md`` and ``<stem>_overlay.png`` (atomically)."""
        out = Path(out_dir)
        ex = self.explained
        record = {"image_id": ex.evidence.image_id, "evidence": ex.evidence.to_json(),
                  "explanation": ex.explanation.model_dump(), "turns": [{"q": q, "a": a} for q, a in self.history]}
        md = [f"# Chat about {ex.evidence.image_id}", "", f"**Explanation:** {ex.explanation.summary}", ""]
        md += [line for q, a in self.history for line in (f"**Q:** {q}", "", f"**A:** {a}", "")]
        paths = [out / f"{stem}_transcript.json", out / f"{stem}_transcript.md", out / f"{stem}_overlay.png"]
        atomic_write_bytes(paths[0], json.dumps(record, indent=2).encode())
        atomic_write_bytes(paths[1], "\n".join(md).encode())
        atomic_write_bytes(paths[2], _boxed(overlay_png(ex.image, ex.amap), ex.evidence))
        return paths
