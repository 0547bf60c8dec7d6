"""``vlm-ad video detect`` as a library call: score clips, write each clip's scores CSV and GIF, and one events.json."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.errors import VlmAdError

__all__ = ["ClipSummary", "VideoDetection", "detect_clips", "write_scores"]


def write_scores(res: Any, path: Path) -> None:
    """A clip's per-frame scores as CSV: the calibrated score, the fused surprise, and each cue's raw value and
    calibrated surprise (``<cue>_norm``)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["frame", "score", "fused", *[f"{n}_raw" for n in res.raw], *[f"{n}_norm" for n in res.normed]])
    for i, f in enumerate(res.frames):
        w.writerow([int(f), f"{res.smoothed[i]:.5f}", f"{res.fused[i]:.5f}",
                    *[f"{v[i]:.5f}" for v in res.raw.values()], *[f"{v[i]:.5f}" for v in res.normed.values()]])
    atomic_write_bytes(path, buf.getvalue().encode())


@dataclass
class ClipSummary:
    """One scored clip: its frames, events (with their explanations) and speed."""

    name: str
    frames: int
    events: list[Any]
    frames_per_second: float


@dataclass
class VideoDetection:
    """What a detect run wrote: the clips scored, every event as JSON, and what was skipped (clip or frame)."""

    clips: list[ClipSummary] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def detect_clips(model: Any, input_path: str | Path, out_dir: str | Path, *, gif: bool = True, gif_stride: int = 1,
                 reasoner: Any = None, model_name: str = "",
                 progress: Callable[[str], Callable[[int], None] | None] | None = None) -> VideoDetection:
    """Score every clip under ``input_path`` with a fitted ``VideoModel`` into ``out_dir``: ``<clip>_scores.csv``,
    ``<clip>.gif`` (when ``gif``) and ``events.json``. An unreadable clip is skipped with its reason; finished clips
    are always written. ``reasoner`` (None = grounded) explains each event; ``progress(clip name)`` returns a
    per-frame callback."""
    from vlm_ad.video import open_clips
    from vlm_ad.video.render import write_gif

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = VideoDetection()
    for clip in open_clips(Path(input_path)):
        try:
            res = model.score_clip(clip, progress=progress(clip.name) if progress else None, reasoner=reasoner)
        except VlmAdError as exc:
            result.skipped.append(f"{clip.name}: {exc}")
            continue
        write_scores(res, out / f"{clip.name}_scores.csv")
        if gif:
            write_gif(model, res, clip, out / f"{clip.name}.gif", stride=gif_stride)
        result.events += [e.to_dict() for e in res.events]
        result.skipped += res.problems
        result.clips.append(ClipSummary(clip.name, len(res.frames), list(res.events),
                                        len(res.frames) / max(res.seconds, 1e-9)))
    record = {"model": model_name, "threshold": model.threshold_, "events": result.events, "skipped": result.skipped}
    atomic_write_bytes(out / "events.json", json.dumps(record, indent=2).encode())
    return result
