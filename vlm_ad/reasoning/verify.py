"""The measurement has the last word: a model's verdict and location are checked against the evidence.

A language model only words the evidence. When its verdict contradicts the detector's (the score against the
threshold) or it names a location no region has, the measured value is kept and the model's claim is shown as an
``unverified: ...`` flag, never the reverse. Quoted numbers and cited ids are checked by
:func:`~vlm_ad.reasoning.schema.check_grounding`.
"""

from __future__ import annotations

from typing import Any

from vlm_ad.reasoning.schema import Explanation, Step

__all__ = ["measured_verdict", "verify_claims"]


def measured_verdict(evidence: Any) -> str | None:
    """The detector's verdict: ``"anomalous"`` when the score is above the threshold, ``"normal"`` when it is not,
    None without a threshold. A video event's evidence is anomalous by construction (events are found above the
    threshold)."""
    if getattr(evidence, "prompt", None) == "explain_event":
        return "anomalous"
    above = evidence.score.above
    return None if above is None else ("anomalous" if above else "normal")


def _score_words(evidence: Any) -> str:
    s = getattr(evidence, "score", None)
    if s is None or s.threshold is None:
        return "the event is above its threshold"
    return f"the score {s.score:.4f} is {'above' if s.above else 'not above'} the threshold {s.threshold:.4f}"


def _quote(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def verify_claims(expl: Explanation, evidence: Any) -> Explanation:
    """``expl`` with the measured verdict and a real region location; each overruled claim becomes a flag.

    Verdict: the detector's (:func:`measured_verdict`) replaces a contradicting one, with the summary of the
    grounded reasoner (the model's summary argued for the other verdict; it is quoted in the flag). Location: a
    location word that no region has is replaced by the first cited region's location (None for a normal image).
    """
    flags, update = [], {}
    measured = measured_verdict(evidence)
    regions = list(getattr(evidence, "regions", []))
    if measured is None:
        flags.append(f"unverified: the detector has no threshold, so the model's verdict '{expl.verdict}' is not "
                     "checked against a measurement")
    elif expl.verdict != measured:
        flags.append(f"unverified: the model said '{expl.verdict}' (\"{_quote(expl.summary)}\"), but "
                     f"{_score_words(evidence)}; the detector's verdict '{measured}' is kept")
        update |= _as_measured(expl, evidence, measured, regions)
    verdict = update.get("verdict", expl.verdict)
    location = update.get("location", expl.location)
    known = {r.location for r in regions}
    if location is not None and location not in known:
        cited = [r for r in regions if r.id in update.get("cited_regions", expl.cited_regions)] or regions
        fixed = cited[0].location if verdict == "anomalous" and cited else None
        flags.append(f"unverified: the model placed it in the '{location}', which no region is in "
                     f"(regions: {', '.join(sorted(known)) or 'none'}); location set to {fixed!r}")
        update["location"] = fixed
    if not flags:
        return expl
    return expl.model_copy(update=update | {"flags": expl.flags + flags})


def _as_measured(expl: Explanation, evidence: Any, measured: str, regions: list) -> dict[str, Any]:
    """The fields that change when the verdict is overruled: the grounded reasoner's decision and summary; the
    model's steps are kept, followed by the measured verdict."""
    from vlm_ad.reasoning.grounded import GroundedReasoner

    ref = GroundedReasoner().explain(evidence)
    if ref.verdict != measured:  # above the threshold but no region: the grounded chain says normal
        ids = ["S"]
        return {"verdict": measured, "location": None, "cited_regions": [], "defect_type": None,
                "steps": expl.steps + [Step(text=f"Verdict: {measured} ({_score_words(evidence)}).", evidence=ids)]}
    ids = ["S"] + ([r.id for r in regions] if measured == "anomalous" else [])
    return {"verdict": measured, "confidence": ref.confidence, "location": ref.location,
            "cited_regions": ref.cited_regions, "defect_type": ref.defect_type, "summary": ref.summary,
            "steps": expl.steps + [Step(text=f"Verdict: {measured} ({_score_words(evidence)}).", evidence=ids)]}
