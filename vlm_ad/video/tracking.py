"""Foreground blobs and a greedy nearest-centroid tracker, with the attributes rules are written about."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Blob", "Track", "Tracker", "direction_bin", "direction_words", "zone_of"]

_DIRS = ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right")  # image rows go down


@dataclass
class Blob:
    """A foreground blob in full-resolution pixels: box (x0, y0, x1, y1) end-exclusive, centroid, area."""

    box: tuple[int, int, int, int]
    centroid: tuple[float, float]
    area: float


@dataclass
class Track:
    """One tracked object.

    Attributes:
        id: track id, unique within a clip.
        frames: frame indices where the object was seen.
        blobs: the blob seen at each of those frames.
        missed: consecutive frames without a match (the track ends after ``max_missed``).
    """

    id: int
    frames: list[int] = field(default_factory=list)
    blobs: list[Blob] = field(default_factory=list)
    missed: int = 0

    def velocity(self, window: int = 5) -> tuple[float, float] | None:
        """Mean (vx, vy) in px/frame over the last ``window`` observations, or None with fewer than 3."""
        if len(self.frames) < 3:
            return None
        k = min(window, len(self.frames) - 1)
        dt = self.frames[-1] - self.frames[-1 - k]
        (x1, y1), (x0, y0) = self.blobs[-1].centroid, self.blobs[-1 - k].centroid
        return (x1 - x0) / dt, (y1 - y0) / dt

    def attributes(self, frame_shape: tuple[int, int]) -> dict:
        """Position, zone, size, speed (px/frame), direction and dwell (frames) at the last observation."""
        b = self.blobs[-1]
        v = self.velocity()
        speed = None if v is None else math.hypot(*v)
        return {"track": self.id, "box": list(b.box), "centroid": [round(b.centroid[0], 1), round(b.centroid[1], 1)],
                "zone": zone_of(b.centroid, frame_shape), "size": round(b.area, 1),
                "speed": None if speed is None else round(speed, 2),
                "direction": None if v is None or speed < 0.3 else direction_words(v),
                "dwell": self.frames[-1] - self.frames[0] + 1}


def direction_bin(v: tuple[float, float], bins: int = 8) -> int:
    """The compass bin of a velocity (0 = right, 2 = down, 4 = left, 6 = up)."""
    return int(round(math.atan2(v[1], v[0]) / (2 * math.pi / bins))) % bins


def direction_words(v: tuple[float, float]) -> str:
    """A velocity's heading in words ("up", "down-left", ...)."""
    return _DIRS[direction_bin(v)]


def zone_of(point: tuple[float, float], frame_shape: tuple[int, int]) -> str:
    """The 3x3 zone name of a point ("upper left", "centre", "lower right", ...)."""
    h, w = frame_shape
    row = ("upper", "middle", "lower")[min(2, int(3 * point[1] / h))]
    col = ("left", "centre", "right")[min(2, int(3 * point[0] / w))]
    if row == "middle":
        return "centre" if col == "centre" else f"middle {col}"
    return f"{row} {col}"


class Tracker:
    """Greedy nearest-centroid matching of blobs to live tracks.

    Args:
        max_distance: largest centroid jump (full-resolution px) still matched to a track.
        max_missed: frames a track survives without a match.
    """

    def __init__(self, *, max_distance: float = 30.0, max_missed: int = 5) -> None:
        self.max_distance = max_distance
        self.max_missed = max_missed
        self.tracks: list[Track] = []
        self.finished: list[Track] = []
        self._next = 1

    def update(self, frame: int, blobs: list[Blob]) -> list[Track]:
        """Match this frame's blobs; returns the tracks seen in this frame."""
        live = [t for t in self.tracks if t.missed <= self.max_missed]
        pairs = sorted((math.dist(t.blobs[-1].centroid, b.centroid), i, j)
                       for i, t in enumerate(live) for j, b in enumerate(blobs))
        used_t, used_b, seen = set(), set(), []
        for dist, i, j in pairs:
            if dist > self.max_distance or i in used_t or j in used_b:
                continue
            used_t.add(i)
            used_b.add(j)
            live[i].frames.append(frame)
            live[i].blobs.append(blobs[j])
            live[i].missed = 0
            seen.append(live[i])
        for i, t in enumerate(live):
            if i not in used_t:
                t.missed += 1
        for j, b in enumerate(blobs):
            if j not in used_b:
                track = Track(self._next, [frame], [b])
                self._next += 1
                seen.append(track)
        self.finished += [t for t in live if t.missed > self.max_missed]
        self.tracks = [t for t in live if t.missed <= self.max_missed] + [t for t in seen if len(t.frames) == 1]
        return seen


def blobs_from_mask(mask: np.ndarray, *, scale: float, min_area: int) -> list[Blob]:
    """Connected components of a (h, w) uint8 foreground mask at ``scale`` -> blobs in full-resolution px."""
    import cv2

    n, _, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out = []
    for k in range(1, n):
        x, y, w, h, area = stats[k]
        if area < min_area:
            continue
        s = 1.0 / scale
        out.append(Blob((int(x * s), int(y * s), int((x + w) * s), int((y + h) * s)),
                        (float(cents[k][0] * s), float(cents[k][1] * s)), float(area * s * s)))
    return out
