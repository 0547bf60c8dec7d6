"""Deterministic answers to chat questions, by topic, quoting only evidence."""

from __future__ import annotations

import re

from vlm_ad.evidence import Evidence, RegionEvidence
from vlm_ad.evidence.build import CORE_LEVEL
from vlm_ad.reasoning.schema import Explanation
from vlm_ad.vocabulary import size_word

__all__ = ["TOPICS", "UNANSWERABLE", "grounded_answer", "topics_of"]

# topic -> words that select it; a question may ask several (answered in this order)
TOPICS: dict[str, tuple[str, ...]] = {
    "verdict": ("is there", "are there", "any defect", "any anomal", "yes or no", "is it anomalous",
                "is this anomalous", "is it defective", "is it normal", "is this normal"),
    "where": ("where", "location", "region", "locate", "position"),
    "size": ("how big", "how large", "how small", "size", "area", "extent"),
    "type": ("type", "what kind", "kind of", "what is it", "what defect", "which defect", "name", "what is wrong",
             "shape", "look like", "looks like"),
    "sure": ("sure", "confident", "confidence", "certain", "score", "threshold", "probab"),
    "normal": ("differ", "normal", "exemplar", "compare", "reference", "good"),
    "map": ("map", "show", "overlay", "heatmap", "heat map"),
}
# words of a question about the result as a whole, answered with the summary when no topic above is asked
SUMMARY_WORDS = ("summar", "explain", "overview", "verdict", "result", "anomal", "defect", "wrong", "problem",
                 "broken", "damage", "ok", "okay", "fine", "pass", "fail", "flaw", "describe", "what happened",
                 "what did you find", "tell me about")
#: the answer to a question the evidence cannot answer (the same sentence the LLM chat prompt asks for)
UNANSWERABLE = "I can't answer that from this image and its evidence."
_CAN = ("I can say where the anomaly is and how big, what it looks like, how sure the detector is, how it differs "
        "from the normal exemplar, or show the map.")


def _says(question: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}", question) for w in words)


def topics_of(question: str) -> list[str]:
    """The topics a question asks about, in :data:`TOPICS` order; ``["summary"]`` for a question about the result
    as a whole; ``[]`` when it asks about nothing the evidence holds (the answer is then :data:`UNANSWERABLE`)."""
    q = question.lower()
    found = [t for t, words in TOPICS.items() if _says(q, words)]
    if "map" in found and "where" in found:  # the map answer already says where
        found.remove("where")
    if "where" in found and "size" in found:  # the region lines say both
        found.remove("size")
    return found or (["summary"] if _says(q, SUMMARY_WORDS) else [])


def _verdict(expl: Explanation, ev: Evidence) -> str:
    s = ev.score
    if s.threshold is None:
        return f"I can't say yes or no: the detector has no threshold (score {s.score:.4f})."
    if s.above:
        return f"Yes, anomalous: the score {s.score:.4f} is above the threshold {s.threshold:.4f}."
    return f"No, normal: the score {s.score:.4f} is not above the threshold {s.threshold:.4f}."


_NONE = "No region exceeds the threshold, so no defect is detected."


def _extent(r: RegionEvidence) -> str:
    defect = f", defect about {r.size_pct:.2f}%" if r.size_pct is not None else ""  # what the size word is said of
    core = f" (core {r.core_pct:.2f}%{defect})" if r.core_pct is not None else ""
    return f"{r.area_pct:.2f}% of the image{core}"


def _below(ev: Evidence) -> str:
    """The strongest response of a normal image, said to be below the threshold (for "where is it?"). Its size
    word is left out when its core was measured: a response below the threshold has no extent worth a word (see
    :func:`_size`)."""
    p = ev.peak
    size = "" if p.core_pct is not None else f"{size_word(p.area_pct / 100)}, "
    return (f"The strongest response, below the threshold {ev.score.threshold:.4f}, is {p.id}: {p.location}, "
            f"{size}box {tuple(p.box)}, {_extent(p)}, peak {p.peak:.4f}.")


#: the size answer when nothing exceeds the threshold (and the core is measured): a defect the detector misses is
#: one too faint to pass it, mostly a small one (70% of the missed defects of the synthetic dev suite were small,
#: while the extent of the strongest response below the threshold says nothing of the defect's: correlation 0.03;
#: eval/results/qa_rules.md)
_MISSED = "If there is a defect, it is most likely small: too faint to pass the threshold."


def _where(expl: Explanation, ev: Evidence) -> str:
    if not ev.regions:
        if ev.peak is not None:
            return f"{_NONE} {_below(ev)}"
        return "No region exceeds the threshold, so nothing is localised. " + expl.summary
    lines = [f"{r.id}: {r.location}, {r.size_word()}, box {tuple(r.box)}, {_extent(r)}, peak {r.peak:.4f}"
             for r in ev.regions]
    return "Regions above the threshold:\n" + "\n".join(lines)


def _size(expl: Explanation, ev: Evidence) -> str:
    """How large: per region its size word, from its core when measured (the region above the threshold is larger
    than the defect: the map spreads it); with no region, :data:`_MISSED` and the strongest response."""
    if not ev.regions:
        if ev.peak is not None and ev.peak.core_pct is not None:
            return f"{_NONE} {_MISSED} {_below(ev)}"
        return _where(expl, ev)
    lines = []
    for r in ev.regions:
        how = (f"its core, the pixels above {CORE_LEVEL:.0%} of the way from the map's median to its peak, covers "
               f"{r.core_pct:.2f}% of the image (the region above the threshold {r.area_pct:.2f}%)"
               if r.core_pct is not None else f"it covers {r.area_pct:.2f}% of the image")
        if r.size_pct is not None:
            how += (f"; less the map's own spread of a single patch, the defect itself is about {r.size_pct:.2f}% of "
                    "the image")
        lines.append(f"{r.id} ({r.location}) is {r.size_word()}: {how}.")
    return "\n".join(lines)


def _type(expl: Explanation, ev: Evidence) -> str:
    if not ev.regions and ev.peak is not None:
        p = ev.peak
        return f"{_NONE} The strongest response {p.id} (below the threshold, {p.location}) is no detection; " + \
            _named(p)
    if not ev.regions:
        return "No defect found, so there is nothing to name. " + expl.summary
    return _named(ev.regions[0])


def _named(r: RegionEvidence) -> str:
    if r.defect:
        d = r.defect
        return (f"{r.id} is most like a {d.name} (library example {d.example_id}, distance {d.distance:.4f}, "
                f"confidence {d.confidence:.2f}). {d.explanation}").strip()
    return (f"No defect namer was given, so there is no type name. {r.id} is {r.shape.description} "
            f"(elongation {r.shape.elongation:.2f}) and {r.contrast.words} than its reference.")


def _sure(expl: Explanation, ev: Evidence) -> str:
    s = ev.score
    if s.threshold is None:
        return f"The score is {s.score:.4f} but the detector has no threshold, so no confident verdict is possible."
    return (f"Verdict {expl.verdict} with confidence {expl.confidence:.2f}: the score {s.score:.4f} is "
            f"{'above' if s.above else 'not above'} the threshold {s.threshold:.4f} (margin {s.margin:+.4f}).")


def _normal(expl: Explanation, ev: Evidence) -> str:
    lines = []
    for r in ev.regions:
        c = r.contrast
        ref = f"exemplar {c.reference_id}" if c.reference == "exemplar" else "the ring around it"
        lines.append(f"{r.id} vs {ref}: {c.words} (intensity {c.intensity_delta:+.1f}, texture ratio "
                     f"{c.texture_ratio:.2f})")
    lines += [f"{e.id}: nearest normal patch in {e.image_id} (row {e.row}, col {e.col}), distance {e.distance:.4f}"
              for e in ev.exemplars[:3]]
    return "\n".join(lines) or "There is no region and no exemplar to compare with."


def _map(expl: Explanation, ev: Evidence) -> str:
    return _where(expl, ev) + "\nType /save to write the overlay PNG (the map over the image) and this transcript."


def grounded_answer(expl: Explanation, evidence: Evidence, question: str) -> str:
    """Answer each topic ``question`` asks about, from the explanation and the evidence only."""
    handlers = {"verdict": _verdict, "where": _where, "size": _size, "type": _type, "sure": _sure, "normal": _normal,
                "map": _map}
    topics = topics_of(question)
    if not topics:
        return f"{UNANSWERABLE} {_CAN}"
    if topics == ["summary"]:
        return expl.summary
    if not evidence.regions and evidence.peak is None and {"where", "size", "type"} & set(topics):
        # one "nothing found" line
        topics = ["where"] + [t for t in topics if t not in ("where", "size", "type")]
    return "\n".join(handlers[t](expl, evidence) for t in topics)
