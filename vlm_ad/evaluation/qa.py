"""A multiple-choice question-answering benchmark in the spirit of MMAD (ICLR 2025), generated from any MVTec-layout
folder with masks and answered through the chat loop by any reasoner.

Per test image (kinds):

``defect``  "Is there a defect in this image?"                yes / no                       every image
``where``   "Where is the defect?"                              the 3 x 3 location words       anomalous, with a mask
``type``    "Which type of defect is it?"                       the folder's defect types      anomalous, with a namer
``size``    "How large is the defect?"                          small / medium / large         anomalous, with a mask

The truth comes from the label, the mask (centroid location word, area size word, :mod:`vlm_ad.vocabulary`) and the
defect folder. A reply is read as the option it names first (whole words, case-insensitive, the longest option where
two start at the same word; for ``defect`` also
"anomalous" = yes and "normal" = no); a reply naming no option is an abstention and counts as wrong. Chance is the
mean of 1 / options over the questions of a kind.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from vlm_ad.evidence.build import CORE_LEVEL
from vlm_ad.types import AnomalyMap, Sample
from vlm_ad.vocabulary import LOCATION_WORDS, SIZE_WORDS, location_word, size_word

__all__ = ["KINDS", "Question", "evaluate_qa", "make_questions", "qa_on_data", "read_choice"]

KINDS = ("defect", "where", "type", "size")
_SYNONYMS = {"yes": ("yes", "anomalous"), "no": ("no", "normal")}


@dataclass(frozen=True)
class Question:
    """One multiple-choice question about one image."""

    image_id: str
    kind: str
    text: str
    choices: tuple[str, ...]
    answer: str

    def prompt(self) -> str:
        return f"{self.text} Answer with one of: {', '.join(self.choices)}."


def make_questions(sample: Sample, *, defect_types: Sequence[str] = (), with_types: bool = False) -> list[Question]:
    """The questions of one test sample (see the module docstring for which kinds it gets)."""
    qs = [Question(sample.image_id, "defect", "Is there a defect in this image?", ("yes", "no"),
                   "yes" if sample.label == 1 else "no")]
    if sample.label != 1:
        return qs
    mask = sample.mask
    if mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        h, w = mask.shape
        where = location_word(float(xs.mean()), float(ys.mean()), w, h)
        qs.append(Question(sample.image_id, "where", "Where is the defect?",
                           tuple(word for row in LOCATION_WORDS for word in row), where))
        qs.append(Question(sample.image_id, "size", "How large is the defect?", SIZE_WORDS,
                           size_word(float(mask.mean()))))
    if with_types and sample.defect_type and len(defect_types) > 1:
        qs.append(Question(sample.image_id, "type", "Which type of defect is it?", tuple(defect_types),
                           sample.defect_type))
    return qs


def read_choice(reply: str, choices: Sequence[str]) -> str | None:
    """The option a reply names first (None: it names none, an abstention)."""
    text = reply.lower().replace("_", " ")
    best: tuple[int, int, str] | None = None
    for choice in choices:
        for word in _SYNONYMS.get(choice, (choice,)):
            m = re.search(rf"\b{re.escape(word.lower().replace('_', ' '))}\b", text)
            # the earliest option; at the same place the longest ("centre right" over "centre")
            if m and (best is None or (m.start(), -len(word)) < best[:2]):
                best = (m.start(), -len(word), choice)
    return None if best is None else best[2]


def evaluate_qa(samples: Sequence[Sample], maps: Sequence[AnomalyMap], pipeline: Any, *,
                defect_types: Sequence[str] = (), progress: Callable[[int], None] | None = None
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ask every sample's questions through a chat session on its explained detection.

    Args:
        samples: test samples with labels, masks and defect types (matched to ``maps`` by ``image_id``).
        maps: the detector's outputs.
        pipeline: measures and explains each map; its reasoner answers; ``type`` questions are asked only when it
            has a namer (a labelled-defect library).
        defect_types: the options of ``type`` questions (the folder's defect types).
        progress: called with 1 per image.

    Returns:
        (metrics, per-question rows). Metrics: ``qa_accuracy``, ``qa_accuracy_<kind>``, ``qa_chance_<kind>``,
        ``qa_abstain_<kind>``, ``qa_questions``, ``qa_seconds_per_answer``.
    """
    from vlm_ad.chat import ChatSession

    by_id = {m.image_id: m for m in maps}
    rows, t0, asked = [], time.perf_counter(), 0
    for s in samples:
        explained = pipeline.explain_map(by_id[s.image_id], s.image)
        for q in make_questions(s, defect_types=defect_types, with_types=pipeline.namer is not None):
            session = ChatSession(explained, pipeline.reasoner)  # each question on its own, no earlier turns
            reply = session.ask(q.prompt())
            asked += 1
            choice = read_choice(reply, q.choices)
            rows.append({"image_id": s.image_id, "kind": q.kind, "answer": q.answer, "choice": choice,
                         "correct": choice == q.answer, "chance": 1 / len(q.choices), "reply": reply[:300]})
        if progress:
            progress(1)
    metrics: dict[str, Any] = {"qa_questions": len(rows),
                               "qa_accuracy": float(np.mean([r["correct"] for r in rows])) if rows else None}
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind]
        if mine:
            metrics[f"qa_accuracy_{kind}"] = float(np.mean([r["correct"] for r in mine]))
            metrics[f"qa_chance_{kind}"] = float(np.mean([r["chance"] for r in mine]))
            metrics[f"qa_abstain_{kind}"] = float(np.mean([r["choice"] is None for r in mine]))
            metrics[f"qa_questions_{kind}"] = len(mine)
    metrics["qa_seconds_per_answer"] = (time.perf_counter() - t0) / max(asked, 1)
    return metrics, rows


def qa_on_data(data: Any, detector: Any, test: Any, maps: Sequence[AnomalyMap], reasoner: Any, *,
               shots_per_type: int = 3, seed: int = 0, progress: Callable[[int], None] | None = None,
               core_level: float | None = CORE_LEVEL, library_features: str | None = None
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """:func:`evaluate_qa` on an MVTec-layout folder: when it has two or more masked defect types, a labelled-defect
    library of ``shots_per_type`` examples per type (drawn with ``seed``) names regions for the ``type`` questions,
    and the library's own images are left out of the questions (no answer is looked up from itself).
    ``core_level``: see :class:`~vlm_ad.pipeline.Pipeline` (None: the rules before region cores, a baseline).
    ``library_features``: the library's ``features`` (:class:`~vlm_ad.naming.DefectLibrary`; default its
    ``DEFAULT_FEATURES``, the mode that names the map's regions best: eval/results/qa.md)."""
    from pathlib import Path

    from vlm_ad.pipeline import Pipeline

    root = Path(str(data))
    samples = [test[i] for i in range(len(test))]
    types = sorted({s.defect_type for s in samples if s.label == 1 and s.mask is not None and s.defect_type})
    namer, held = None, set()
    if len(types) > 1 and root.is_dir():
        from vlm_ad.naming import DEFAULT_FEATURES, DefectLibrary

        library_features = library_features or DEFAULT_FEATURES
        namer = DefectLibrary(features=library_features).add_mvtec(root, per_type=shots_per_type, seed=seed)
        held = set(namer.example_ids)
    pipeline = Pipeline(detector, reasoner, namer=namer, exemplar_root=root if root.is_dir() else None,
                        core_level=core_level)
    asked = [s for s in samples if s.image_id not in held]
    metrics, rows = evaluate_qa(asked, maps, pipeline, defect_types=types, progress=progress)
    metrics |= {"qa_reasoner": getattr(reasoner, "name", str(reasoner)), "qa_library_shots_per_type":
                shots_per_type if namer is not None else 0, "qa_library_features": library_features,
                "qa_images": len(asked)}
    return metrics, rows
