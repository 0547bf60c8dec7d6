"""Temporal smoothing, events from contiguous anomalous frames, and their grounded explanations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from vlm_ad.reasoning.schema import Explanation, Step
from vlm_ad.video.cues import NORMAL_KIND

__all__ = ["Event", "explain_event", "find_runs", "smooth_scores"]


def smooth_scores(scores: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing over time (``sigma`` in frames; 0 = none). Uses past and future frames."""
    from scipy.ndimage import gaussian_filter1d

    scores = np.asarray(scores, np.float64)
    return scores if sigma <= 0 or len(scores) < 2 else gaussian_filter1d(scores, sigma, mode="nearest")


def find_runs(above: np.ndarray, *, min_length: int = 5, merge_gap: int = 5) -> list[tuple[int, int]]:
    """(start, end) positions, end inclusive, of runs of True, merging gaps up to ``merge_gap``, dropping runs
    shorter than ``min_length``."""
    runs: list[list[int]] = []
    for i in np.flatnonzero(above):
        if runs and i - runs[-1][1] <= merge_gap + 1:
            runs[-1][1] = int(i)
        else:
            runs.append([int(i), int(i)])
    return [(a, b) for a, b in runs if b - a + 1 >= min_length]


@dataclass
class Event:
    """A run of anomalous frames in one clip, with what was measured about it.

    Attributes:
        clip: clip name.
        start: first frame index. end: last frame index (inclusive). peak: frame index of the highest score.
        peak_score: the smoothed fused score at ``peak``. threshold: the event threshold it exceeded.
        cues: cue name -> its surprise at the peak, -log10 of the share of normal calibration frames scoring as high.
        cue_details: cue name -> the facts that cue measured at the peak.
        track: per frame, the cited region {"frame", "box": [x0, y0, x1, y1]} (full-resolution px).
        rules: the object rules that apply (readable sentences).
        explanation: the grounded explanation (filled by :func:`explain_event`).
    """

    clip: str
    start: int
    end: int
    peak: int
    peak_score: float
    threshold: float
    cues: dict[str, float]
    cue_details: dict[str, dict]
    track: list[dict] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    explanation: Explanation | None = None

    def to_dict(self) -> dict:
        """JSON-able form (the explanation as its schema dict)."""
        d = asdict(self) | {"explanation": self.explanation.model_dump() if self.explanation else None}
        return d


def _object_step(obj: dict) -> Step:
    broken = "; ".join(obj["broken"]) if obj["broken"] else "no normal rule broken by its own attributes"
    speed = "unknown speed" if obj["speed"] is None else f"{obj['speed']:.2f} px/frame"
    heading = f", heading {obj['direction']}" if obj["direction"] else ""
    kind = f" By size and speed it is {obj['kind']}." if obj.get("kind") else ""
    return Step(text=f"O1: object #{obj['track']} in the {obj['zone']}, box {tuple(obj['box'])}, moves at {speed}"
                     f"{heading}, size {obj['size']:.0f} px, seen for {obj['dwell']} frames: {broken}.{kind}",
                evidence=["O1"])


def _cue_step(k: int, name: str, value: float, det: dict) -> Step:
    text = (f"C{k}: the {name} cue scores {value:.2f} at the peak (-log10 of the share of normal frames scoring as "
            f"high: 2.00 = 1 in 100)")
    if name == "flow" and det:
        text += (f"; the fastest flow is {det['max_speed']:.2f} px/frame, normal frames reach "
                 f"{det['normal_max_speed']:.2f}")
    elif name == "motion" and det:
        text += (f"; the fastest cell moves {det['direction']} at {det['speed']:.2f} px/frame where normal motion "
                 f"reaches {det['normal_max_speed']:.2f} px/frame ({det['ratio']:.2f}x)")
    elif name == "appearance" and det:
        text += f"; patch distance to the nearest normal frame patch {det['patch_distance']:.4f}"
    return Step(text=text + ".", evidence=[f"C{k}"])


def explain_event(event: Event, frame_shape: tuple[int, int]) -> Explanation:
    """A deterministic grounded explanation: the score vs the threshold, each cue at the peak, the object and
    the rule it breaks, and the region's track. Evidence ids: S, C1.., O1, R1."""
    from vlm_ad.video.tracking import zone_of

    ranked = sorted(event.cues.items(), key=lambda kv: -kv[1])
    n = event.end - event.start + 1
    ratio = event.peak_score / event.threshold if event.threshold > 0 else float("nan")
    steps = [Step(text=f"Frames {event.start}-{event.end} ({n} frames) score above the threshold "
                       f"{event.threshold:.2f}; the peak {event.peak_score:.2f} at frame {event.peak} is "
                       f"{ratio:.2f}x the threshold.", evidence=["S"])]
    steps += [_cue_step(k, name, v, event.cue_details.get(name, {})) for k, (name, v) in enumerate(ranked, 1)]
    objs = event.cue_details.get("objects", {}).get("objects", [])
    obj = objs[0] if objs else None
    if obj:
        steps.append(_object_step(obj))
    first, last = event.track[0], event.track[-1]
    centre = lambda b: ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)  # noqa: E731
    peak_box = next((t["box"] for t in event.track if t["frame"] == event.peak), last["box"])
    where = zone_of(centre(peak_box), frame_shape)
    steps.append(Step(text=f"R1: the cited region moves from {tuple(first['box'])} at frame {first['frame']} to "
                           f"{tuple(last['box'])} at frame {last['frame']}; at the peak it is in the {where}.",
                      evidence=["R1"]))
    steps.append(Step(text="Verdict: anomalous.", evidence=["S", "R1"]))
    lead = ranked[0][0]
    if obj and obj["broken"]:
        what = f"an object in the {obj['zone']} breaks the normal rule: {obj['broken'][0]}"
        if obj.get("kind") and obj["kind"] != NORMAL_KIND:
            what += f" ({obj['kind'].split(':')[0]})"
    elif lead == "motion" and event.cue_details.get("motion"):
        m = event.cue_details["motion"]
        what = (f"motion in the {where} at {m['speed']:.2f} px/frame, {m['ratio']:.2f}x the fastest normal motion "
                f"there")
    else:
        what = f"the {where} looks unlike any normal frame"
    summary = f"Frames {event.start}-{event.end}: {what}; the {lead} cue fired most ({ranked[0][1]:.2f})."
    conf = round(min(0.99, 0.5 + max(0.0, ratio - 1.0) / 2), 2) if ratio == ratio else 0.5
    return Explanation(verdict="anomalous", confidence=conf, location=where, cited_regions=["R1"], steps=steps,
                       summary=summary, reasoner="grounded")
