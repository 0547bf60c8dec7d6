"""Event evidence for the LLM reasoners: one video event as citable, checkable facts.

The same :class:`~vlm_ad.reasoning.llm.ChatReasoner` that explains images explains events: this class gives it what
it needs of an evidence object - ``ids`` (``S`` score, ``C1``.. cues, ``O1`` the leading object, ``R1`` the cited
region's track), ``regions`` (R1 with its location word), ``numbers()`` (every number a claim may quote), ``to_json()``
and the prompt name (``prompts/explain_event.yaml``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vlm_ad.video.events import Event

__all__ = ["EventEvidence", "EventRegion"]

_NUM = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class EventRegion:
    """The cited region of an event, as the reply schema and the grounding check see a region."""

    id: str
    location: str
    defect: Any = None


def _numbers(value: Any) -> list[float]:
    """Every number in a JSON-like value: numeric leaves and the numbers written inside strings."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, str):
        return [float(m) for m in _NUM.findall(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v)]
    return []


class EventEvidence:
    """The evidence of one event (see the module docstring)."""

    prompt = "explain_event"

    def __init__(self, event: Event, frame_shape: tuple[int, int]) -> None:
        from vlm_ad.video.tracking import zone_of

        self.event, self.frame_shape = event, tuple(frame_shape)
        peak_box = next((t["box"] for t in event.track if t["frame"] == event.peak), event.track[-1]["box"])
        self.location = zone_of(((peak_box[0] + peak_box[2]) / 2, (peak_box[1] + peak_box[3]) / 2), frame_shape)
        self.regions = [EventRegion("R1", self.location)]
        self._cues = sorted(event.cues.items(), key=lambda kv: -kv[1])
        objs = event.cue_details.get("objects", {}).get("objects", [])
        self._object = objs[0] if objs else None

    @property
    def ids(self) -> set[str]:
        """Every citable evidence id."""
        return {"S", "R1"} | {f"C{k}" for k in range(1, len(self._cues) + 1)} | ({"O1"} if self._object else set())

    def to_json(self) -> dict[str, Any]:
        e = self.event
        ratio = round(e.peak_score / e.threshold, 2) if e.threshold > 0 else None
        out: dict[str, Any] = {
            "S": {"clip": e.clip, "first_frame": e.start, "last_frame": e.end, "frames": e.end - e.start + 1,
                  "peak_frame": e.peak, "peak_score": e.peak_score, "threshold": e.threshold,
                  "peak_over_threshold": ratio},
            "cues": {f"C{k}": {"cue": name, "score_at_peak": v, "details": _cue_facts(name, e.cue_details.get(name))}
                     for k, (name, v) in enumerate(self._cues, 1)},
            "R1": {"location": self.location, "first": e.track[0], "last": e.track[-1], "frame_size": self.frame_shape},
            "normal_rules": e.rules,
        }
        if self._object:
            out["O1"] = {k: v for k, v in self._object.items() if k != "score"}
        return out

    def numbers(self) -> list[float]:
        """Every number an explanation may quote (as in the JSON the model sees)."""
        return _numbers(self.to_json())


def _cue_facts(name: str, details: dict | None) -> dict:
    if not details:
        return {}
    if name == "objects":  # the leading object is O1; the others are summarised by count
        return {"objects_in_frame": len(details.get("objects", []))}
    return {k: v for k, v in details.items() if isinstance(v, (int, float, str))}
