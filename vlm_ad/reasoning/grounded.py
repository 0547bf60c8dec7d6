"""The ``grounded`` reasoner: no model, deterministic. A numbered chain of thought over the evidence in which
every step cites evidence ids and quotes measured numbers, then a verdict."""

from __future__ import annotations

from vlm_ad.evidence import Evidence, RegionEvidence
from vlm_ad.reasoning.base import ImageViews, Reasoner
from vlm_ad.reasoning.schema import Explanation, Step

__all__ = ["GroundedReasoner", "confidence_of"]


def confidence_of(evidence: Evidence) -> float:
    """A confidence in [0.5, 0.99] that grows with the score's relative distance to the threshold."""
    s = evidence.score
    if s.threshold is None or s.threshold <= 0:
        return 0.5
    return round(min(0.99, 0.5 + abs(s.score - s.threshold) / s.threshold), 2)


def _reference_words(r: RegionEvidence) -> str:
    if r.contrast.reference == "exemplar":
        return f"the matching patch of the nearest normal exemplar ({r.contrast.reference_id})"
    return "a ring of surrounding pixels in the same image"


def _region_steps(r: RegionEvidence, exemplar_id: str | None) -> list[Step]:
    x0, y0, x1, y1 = r.box
    sh, c = r.shape, r.contrast
    orient = f", oriented {sh.orientation} ({sh.orientation_deg:.1f} deg)" if sh.orientation != "none" else ""
    if r.core_pct is None:
        core = ""
    elif r.size_pct is None:
        core = f" (its core {r.core_pct:.2f}%: {r.size_word()})"
    else:  # the size word is said of the defect's estimate, the core less the map's spread of one patch
        core = (f" (its core {r.core_pct:.2f}%; less the map's spread of one patch, the defect about "
                f"{r.size_pct:.2f}%: {r.size_word()})")
    steps = [
        Step(text=f"{r.id} covers {r.area_pct:.2f}% of the image{core} in the {r.location}, box ({x0}, {y0})-({x1}, "
                  f"{y1}), peak {r.peak:.4f}.", evidence=[r.id]),
        Step(text=f"{r.id} is {sh.description} (elongation {sh.elongation:.2f}{orient}).", evidence=[r.id]),
        Step(text=f"Against {_reference_words(r)}, {r.id} looks {c.words}: intensity {c.intensity_delta:+.1f} grey "
                  f"levels, texture ratio {c.texture_ratio:.2f}.",
             evidence=[r.id] + ([exemplar_id] if exemplar_id and c.reference == "exemplar" else [])),
    ]
    if r.defect:
        d = r.defect
        steps.append(Step(text=f"{r.id} resembles library example {d.example_id}, a {d.name} (distance "
                               f"{d.distance:.4f}, confidence {d.confidence:.2f}).", evidence=[r.id]))
    return steps


def _score_step(evidence: Evidence) -> Step:
    s = evidence.score
    if s.threshold is None:
        return Step(text=f"The image score is {s.score:.4f}; the detector has no threshold to compare it with.",
                    evidence=["S"])
    rel = "above" if s.above else "not above"
    ratio = f", {s.ratio:.2f} times the threshold" if s.ratio is not None else ""
    return Step(text=f"The image score {s.score:.4f} is {rel} the threshold {s.threshold:.4f} (margin {s.margin:+.4f}"
                     f"{ratio}).", evidence=["S"])


def _summary(evidence: Evidence, verdict: str) -> str:
    s = evidence.score
    if verdict == "normal":
        tail = f" (score {s.score:.4f}, threshold {s.threshold:.4f})" if s.threshold is not None else ""
        return f"Normal: no region exceeds the threshold{tail}."
    r = evidence.regions[0]
    name = r.defect.name.replace("_", " ") if r.defect else "defect"
    ref = "the nearest normal exemplar" if r.contrast.reference == "exemplar" else "its surroundings"
    more = f"; {len(evidence.regions)} regions in all" if len(evidence.regions) > 1 else ""
    return (f"Anomalous: a {name} in the {r.location} ({r.id}, {r.area_pct:.2f}% of the image), {r.contrast.words} "
            f"compared with {ref}{more}; score {s.score:.4f} vs threshold {s.threshold:.4f}.")


class GroundedReasoner(Reasoner):
    """Deterministic chain of thought over the evidence (the default reasoner; needs no model)."""

    name = "grounded"

    def explain(self, evidence: Evidence, images: ImageViews | None = None) -> Explanation:
        """Steps: the score vs the threshold, then per region its extent, shape, contrast and name, then the
        nearest exemplars; the verdict is the score vs the threshold. A video event's evidence gets the event
        chain of :func:`vlm_ad.video.events.explain_event`."""
        if getattr(evidence, "prompt", None) == "explain_event":
            from vlm_ad.video.events import explain_event

            return explain_event(evidence.event, evidence.frame_shape)
        steps = [_score_step(evidence)]
        for k, r in enumerate(evidence.regions):
            exemplar = evidence.exemplars[min(k, len(evidence.exemplars) - 1)].id if evidence.exemplars else None
            steps += _region_steps(r, exemplar)
        if evidence.exemplars:
            e = evidence.exemplars[0]
            steps.append(Step(text=f"The nearest normal exemplar of the most anomalous patch is {e.image_id} ({e.id}, "
                                   f"feature distance {e.distance:.4f}).", evidence=[e.id]))
        above = bool(evidence.score.above) and bool(evidence.regions)
        verdict = "anomalous" if above else "normal"
        steps.append(Step(text=f"Verdict: {verdict}.", evidence=["S"] + [r.id for r in evidence.regions]))
        first = evidence.regions[0] if above else None
        return Explanation(
            verdict=verdict, confidence=confidence_of(evidence),
            defect_type=first.defect.name if first and first.defect else None,
            location=first.location if first else None,
            cited_regions=[r.id for r in evidence.regions] if above else [],
            steps=steps, summary=_summary(evidence, verdict), reasoner=self.name,
            flags=[] if evidence.score.threshold is not None else ["no threshold: the verdict defaults to normal"])

    def answer(self, evidence: Evidence, question: str, history: list[tuple[str, str]] | None = None,
               images: ImageViews | None = None) -> str:
        """Answer a question from the evidence by topic (where, what type, how sure, versus normal, the map)."""
        from vlm_ad.reasoning.answers import grounded_answer

        return grounded_answer(self.explain(evidence), evidence, question)
