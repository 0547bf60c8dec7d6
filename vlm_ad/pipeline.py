"""The image chain, top to bottom: image -> :class:`AnomalyMap` -> :class:`Evidence` -> :class:`Explanation` ->
:class:`Record`.

::

    from vlm_ad.detectors import load_detector
    from vlm_ad.pipeline import Pipeline

    pipe = Pipeline(load_detector("models/tile"))     # reasoner: grounded (no model) unless one is given
    result = pipe.run("part.png")                     # Explained: image, map, evidence, explanation
    result.record().to_json()                         # one line of report.jsonl

``vlm-ad detect``, ``chat``, ``report`` and ``eval --explanations`` all go through these steps; none re-implements
one. A :class:`Record` is what a report line, a chat turn, the web page and a batch engine consume.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.errors import DataError
from vlm_ad.evidence import Evidence, Namer, build_evidence
from vlm_ad.evidence.build import CORE_LEVEL
from vlm_ad.reasoning import Explanation, ImageViews, Reasoner
from vlm_ad.types import AnomalyMap, Sample

__all__ = ["Detection", "Explained", "ImageInput", "Pipeline", "Record", "detect_images", "detection_outputs",
           "exemplar_loader", "load_sample", "unique_stems", "write_detection"]

ImageInput = Union[str, Path, np.ndarray, Sample]
ExemplarLoader = Callable[[str], "np.ndarray | None"]


def load_sample(image: ImageInput) -> Sample:
    """A :class:`Sample` from a file path, an RGB array or a Sample (returned as is)."""
    from vlm_ad.data import load_image

    if isinstance(image, Sample):
        return image
    if isinstance(image, (str, Path)):
        return check_measurable(Sample(load_image(image), Path(image).name, path=Path(image)))
    return check_measurable(Sample(np.asarray(image), "image"))


MIN_SIDE = 8  # pixels: below this no region, gradient or contrast can be measured


def check_measurable(sample: Sample) -> Sample:
    """``sample`` itself when the chain can measure it (H x W or H x W x C, at least :data:`MIN_SIDE` pixels a
    side); else a :class:`DataError` naming it."""
    shape = np.shape(sample.image)
    if len(shape) not in (2, 3) or min(shape[:2]) < MIN_SIDE:
        size = f"{shape[1]} x {shape[0]} pixels" if len(shape) in (2, 3) else f"an array of shape {shape}"
        raise DataError(f"image {sample.image_id} is {size}; vlm-ad needs an H x W (x C) image with at least "
                        f"{MIN_SIDE} pixels on each side to measure anything (upscale it or crop a larger region)")
    return sample


def exemplar_loader(root: str | Path | None) -> ExemplarLoader | None:
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


@dataclass
class Record:
    """One image's result as it is stored and shown (a ``report.jsonl`` line, the web page, a batch engine).

    Attributes:
        image_id: id of the image (its path relative to the input folder, or its file name).
        path: the image file, when it came from one.
        status: ``"ok"`` or ``"failed"``.
        score: image anomaly score (higher = more anomalous); None when failed.
        threshold: the detector's decision threshold, or None.
        label: 1 anomalous, 0 normal, None without a threshold or when failed.
        overlay: the overlay PNG's path relative to the output folder, when one was written.
        evidence: what was measured (regions, exemplars, score vs threshold).
        explanation: the reasoner's validated explanation.
        error: ``"ErrorType: message"`` when failed.
        raw: the model's raw output behind a failure, when there was one.
        key: what makes the record unique in a batch (image id, content hash and the run's model and reasoner),
            set by the batch writer (:mod:`vlm_ad.report`).
    """

    image_id: str
    path: str | None = None
    status: str = "ok"
    score: float | None = None
    threshold: float | None = None
    label: int | None = None
    overlay: str | None = None
    evidence: Evidence | None = field(default=None, repr=False)
    explanation: Explanation | None = None
    error: str | None = None
    raw: str | None = None
    key: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failed(cls, image_id: str, path: str | None, exc: BaseException) -> Record:
        """The record of an image that could not be processed."""
        return cls(image_id, path, "failed", error=f"{type(exc).__name__}: {exc}", raw=getattr(exc, "raw", None))

    def to_json(self) -> dict[str, Any]:
        """The JSON object of one ``report.jsonl`` line."""
        out: dict[str, Any] = {"path": self.path, "image_id": self.image_id, "status": self.status}
        if self.key is not None:
            out["key"] = self.key
        if not self.ok:
            return out | {"error": self.error, "raw": self.raw}
        ev = self.evidence.to_json() if self.evidence is not None else None
        return out | {"score": self.score, "threshold": self.threshold, "label": self.label, "overlay": self.overlay,
                      "regions": ev["regions"] if ev else [], "evidence": ev,
                      "explanation": self.explanation.model_dump() if self.explanation else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        """Rebuild a record from :meth:`to_json` output."""
        ev, ex = data.get("evidence"), data.get("explanation")
        return cls(data["image_id"], data.get("path"), data.get("status", "ok"), data.get("score"),
                   data.get("threshold"), data.get("label"), data.get("overlay"),
                   Evidence.from_json(ev) if ev else None, Explanation.model_validate(ex) if ex else None,
                   data.get("error"), data.get("raw"), data.get("key"))


@dataclass
class Explained:
    """One image through the whole chain: its pixels, the map, the evidence and the explanation (``views``: the
    pictures a reasoner that sees images was shown, which chat shows it again)."""

    image: np.ndarray = field(repr=False)
    amap: AnomalyMap = field(repr=False)
    evidence: Evidence
    explanation: Explanation
    views: ImageViews | None = field(default=None, repr=False)

    def overlay(self) -> np.ndarray:
        """The map over the image with the evidence's numbered region boxes (R1, R2, ...)."""
        from vlm_ad.viz import map_overlay

        if self.views is not None and self.views.overlay is not None:  # drawn already for a reasoner that sees
            return self.views.overlay

        return map_overlay(self.image, self.amap.map, self.amap.threshold,
                           [(r.id, r.box) for r in self.evidence.regions])

    def record(self, *, path: str | Path | None = None, overlay: str | None = None) -> Record:
        """The :class:`Record` of this result (``overlay``: where its overlay PNG was written, if it was)."""
        return Record(self.evidence.image_id, None if path is None else str(path), "ok", float(self.amap.score),
                      self.amap.threshold, self.amap.label, overlay, self.evidence, self.explanation)


class Pipeline:
    """A fitted detector and a reasoner, run as one chain.

    Args:
        detector: a fitted detector (``load_detector(dir)`` or ``create_detector(...).fit(...)``).
        reasoner: who writes the explanation; the grounded reasoner (no model) when None.
        namer: optional defect namer (a labelled-defect library) for the evidence.
        exemplar_root: the folder the model was fitted on, so contrasts use the exemplar images.
        core_level: where each region's core is cut (see :func:`~vlm_ad.evidence.build.region_core`); None measures
            no core (size answers and defect names then use the whole region above the threshold).
    """

    def __init__(self, detector: Any, reasoner: Reasoner | None = None, *, namer: Namer | None = None,
                 exemplar_root: str | Path | None = None, core_level: float | None = CORE_LEVEL) -> None:
        if reasoner is None:
            from vlm_ad.reasoning import create_reasoner

            reasoner = create_reasoner("grounded")
        self.detector, self.reasoner, self.namer = detector, reasoner, namer
        self.exemplars = exemplar_loader(exemplar_root)
        self.core_level = core_level

    def detect(self, sample: Sample) -> AnomalyMap:
        """Step 1: the anomaly map, score and nearest exemplars of one image."""
        return self.detector.predict([check_measurable(sample)])[0]

    def measure(self, amap: AnomalyMap, image: np.ndarray) -> Evidence:
        """Step 2: regions, shapes, contrasts against the nearest exemplar, defect names."""
        grid = getattr(self.detector, "grid_shape", None)
        return build_evidence(amap, image, namer=self.namer, load_exemplar=self.exemplars, grid_shape=grid,
                              core_level=self.core_level, point_spread=getattr(self.detector, "point_spread", None))

    def explain(self, evidence: Evidence, images: ImageViews | None = None) -> Explanation:
        """Step 3: the reasoner's validated explanation of the evidence (and of ``images``, for a reasoner that
        sees them)."""
        return self.reasoner.explain(evidence) if images is None else self.reasoner.explain(evidence, images)

    def views(self, amap: AnomalyMap, image: np.ndarray, evidence: Evidence) -> ImageViews:
        """What a vision-language reasoner is shown: the image, the overlay with numbered region boxes and the
        nearest normal exemplar's patch (E1; None without an exemplar folder or when its image does not load)."""
        from vlm_ad.viz import map_overlay

        overlay = map_overlay(image, amap.map, amap.threshold, [(r.id, r.box) for r in evidence.regions])
        return ImageViews(image, overlay, self._exemplar_patch(evidence))

    def _exemplar_patch(self, evidence: Evidence) -> np.ndarray | None:
        """The nearest exemplar's 3x3 feature cells around E1's patch, from the exemplar folder."""
        if not evidence.exemplars or self.exemplars is None:
            return None
        hit = evidence.exemplars[0]
        pixels = self.exemplars(hit.image_id)
        grid = getattr(self.detector, "grid_shape", None)
        if pixels is None or grid is None:
            return None
        h, w = pixels.shape[:2]
        rows, cols = grid((h, w)) if callable(grid) else grid
        cy, cx, ch, cw = (hit.row + 0.5) * h / rows, (hit.col + 0.5) * w / cols, 1.5 * h / rows, 1.5 * w / cols
        y0, y1, x0, x1 = int(max(0, cy - ch)), int(min(h, cy + ch)), int(max(0, cx - cw)), int(min(w, cx + cw))
        return np.ascontiguousarray(pixels[y0:y1, x0:x1]) if y1 > y0 and x1 > x0 else None

    def explain_map(self, amap: AnomalyMap, image: np.ndarray) -> Explained:
        """Steps 2 and 3 for a detection that exists already (e.g. in an evaluation)."""
        evidence = self.measure(amap, image)
        views = self.views(amap, image, evidence) if getattr(self.reasoner, "sees_images", False) else None
        return Explained(image, amap, evidence, self.explain(evidence, views), views)

    def run(self, image: ImageInput) -> Explained:
        """The whole chain for one image (a path, an RGB array or a Sample)."""
        sample = load_sample(image)
        return self.explain_map(self.detect(sample), sample.image)


@dataclass
class Detection:
    """One input of ``vlm-ad detect``: its JSON record, or why it was skipped."""

    path: Path
    record: dict[str, Any] | None = None
    error: str | None = None


def detect_images(images: Sequence[str | Path], detector: Any, out_dir: str | Path, *,
                  progress: Callable[[int], None] | None = None,
                  on_total: Callable[[int], None] | None = None, engine: Any = None,
                  write_threads: int = 2) -> list[Detection]:
    """``vlm-ad detect``: score every image (files, or folders of images) and write each one's outputs
    (:func:`write_detection`) into ``out_dir``. An unreadable image is skipped with its error; the others are written.

    ``engine`` computes the detections (:mod:`vlm_ad.engines`; default: this process); the files are written here,
    by ``write_threads`` threads while the next images are computed (0: in this thread; see :mod:`vlm_ad._writer`:
    each file is written atomically, a write error is raised here, and an interrupted run leaves no partial file).
    """
    from vlm_ad._writer import BackgroundWriter
    from vlm_ad.data import ImageFolder
    from vlm_ad.engines import LocalEngine, WorkItem, detect_item

    out = Path(out_dir)
    items = [it for p in images for it in ImageFolder(p).items]
    out.mkdir(parents=True, exist_ok=True)
    if on_total:
        on_total(len(items))
    stems = unique_stems([it.path for it in items])
    work = [WorkItem(it.image_id, str(it.path), stem) for it, stem in zip(items, stems)]
    engine = engine or LocalEngine(Pipeline(detector))
    found: dict[str, Detection] = {}
    try:
        with BackgroundWriter(write_threads) as writer:
            for res in engine.map(detect_item, work):
                if res.overlay_png is None:
                    found[res.item.stem] = Detection(Path(res.item.path), error=res.record["error"])
                else:
                    writer.submit(_write_outputs, out, res.item.stem, res.record, res.overlay_png)
                    found[res.item.stem] = Detection(Path(res.item.path), res.record)
                if progress:
                    progress(1)
    finally:
        engine.close()
    return [found[w.stem] for w in work]


def write_detection(amap: AnomalyMap, image: np.ndarray, out_dir: Path, stem: str, *, region_threshold: float | None
                    ) -> dict[str, Any]:
    """``vlm-ad detect``'s outputs: ``<stem>.json`` (score, label, threshold, regions, nearest exemplars) and
    ``<stem>_overlay.png``; returns the JSON record."""
    record, png = detection_outputs(amap, image, region_threshold=region_threshold)
    _write_outputs(out_dir, stem, record, png)
    return record


def _write_outputs(out_dir: Path, stem: str, record: dict[str, Any], png: bytes) -> None:
    """``<stem>_overlay.png`` and ``<stem>.json`` in ``out_dir``, each written atomically, the overlay first (a record
    never names a missing overlay, even when the run is stopped between the two)."""
    atomic_write_bytes(out_dir / f"{stem}_overlay.png", png)
    atomic_write_bytes(out_dir / f"{stem}.json", json.dumps(record, indent=2).encode())


def detection_outputs(amap: AnomalyMap, image: np.ndarray, *, region_threshold: float | None
                      ) -> tuple[dict[str, Any], bytes]:
    """What :func:`write_detection` writes, in memory: the JSON record and the overlay PNG bytes."""
    from vlm_ad.regions import find_regions
    from vlm_ad.viz import map_overlay, png_bytes

    thr = amap.threshold if region_threshold is None else region_threshold
    amap.regions = find_regions(amap.map, thr) if thr is not None else []
    return amap.to_json(), png_bytes(map_overlay(image, amap.map, thr))


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems made unique (``a``, ``a-2``, ...) so outputs of same-named inputs do not overwrite each other."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        n = seen.get(p.stem, 0) + 1
        seen[p.stem] = n
        out.append(p.stem if n == 1 else f"{p.stem}-{n}")
    return out
