"""The video model: cues fitted on normal clips, normalised on held-out normal clips, fused, smoothed, events."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.errors import ConfigError, DataError, EmptyDatasetError, NotFittedError
from vlm_ad.video.cues import Cue, FrameContext, create_cue, list_cues
from vlm_ad.video.events import Event, explain_event, find_runs, smooth_scores
from vlm_ad.video.io import VideoClip

__all__ = ["ClipResult", "VideoModel", "VideoModelConfig"]


@dataclass
class VideoModelConfig:
    """Settings of a :class:`VideoModel` (validated on construction).

    Attributes:
        cues: cue names to use (see ``list_cues()``).
        weights: fusion weight per cue (missing cues weigh 1).
        cue_options: per-cue keyword options for ``create_cue``.
        scale: working scale of the grayscale frame for motion and objects.
        cell: cell size of the shared map grid, in full-resolution pixels.
        sigma: temporal smoothing (frames) of the fused score.
        val_fraction: share of the normal clips held out to normalise the cues and set the event threshold.
        threshold_quantile: quantile of the smoothed fused validation scores used as the event threshold.
        min_event: shortest event (frames). merge_gap: gaps up to this many frames join two events.
    """

    cues: list[str] = field(default_factory=lambda: ["motion", "objects", "appearance"])
    weights: dict[str, float] = field(default_factory=dict)
    cue_options: dict[str, dict] = field(default_factory=dict)
    scale: float = 0.5
    cell: int = 16
    sigma: float = 3.0
    val_fraction: float = 0.25
    threshold_quantile: float = 0.995
    min_event: int = 5
    merge_gap: int = 5

    def __post_init__(self) -> None:
        unknown = [c for c in self.cues if c not in list_cues()]
        if unknown or not self.cues:
            raise ConfigError(f"unknown or no cues {unknown}; allowed: {', '.join(list_cues())}")
        if not 0 < self.scale <= 1:
            raise ConfigError(f"scale must be in (0, 1], got {self.scale}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}; use 0 to validate on "
                              "the training clips themselves")


@dataclass
class ClipResult:
    """Scores of one clip.

    Attributes:
        clip: clip name. frames: (T,) frame indices that were read.
        raw: cue -> (T,) raw cue scores. normed: cue -> (T,) normalised scores (1.0 = normal 99th percentile).
        fused: (T,) weighted sum of normalised scores. smoothed: (T,) fused after temporal smoothing.
        maps: (T, gh, gw) float32 fused normalised maps. details: per frame, cue -> facts.
        frame_shape: (H, W). events: the explained events. problems: skipped frames or files. seconds: wall time.
    """

    clip: str
    frames: np.ndarray
    raw: dict[str, np.ndarray]
    normed: dict[str, np.ndarray]
    fused: np.ndarray
    smoothed: np.ndarray
    maps: np.ndarray
    details: list[dict]
    frame_shape: tuple[int, int]
    events: list[Event] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cue_seconds: dict[str, float] = field(default_factory=dict)


def _explain_with(reasoner: Any, event: Event, frame_shape: tuple[int, int], grounded: Any) -> Any:
    from vlm_ad.errors import ExplanationError
    from vlm_ad.video.evidence import EventEvidence

    try:
        return reasoner.explain(EventEvidence(event, frame_shape))
    except ExplanationError as exc:
        return grounded.model_copy(update={"flags": [*grounded.flags, f"{reasoner.name} gave no valid explanation "
                                                     f"({exc}); grounded explanation kept"]})


class VideoModel:
    """Explainable video anomaly detection from appearance, motion and object cues (higher = more anomalous).

    Args:
        config: a :class:`VideoModelConfig`, or None for the defaults; keyword arguments override its fields.
    """

    def __init__(self, config: VideoModelConfig | None = None, **overrides) -> None:
        self.config = VideoModelConfig(**(asdict(config or VideoModelConfig()) | overrides))
        self.cues: dict[str, Cue] = {n: create_cue(n, **self.config.cue_options.get(n, {})) for n in self.config.cues}
        self.norm_: dict[str, tuple[float, float]] | None = None
        self.threshold_: float | None = None
        self.grid_: tuple[int, int] | None = None

    # ------------------------------------------------------------------------------------------------ frames
    def _contexts(self, clip: VideoClip, progress: Callable[[int], None] | None = None):
        import cv2

        c = self.config
        for frame in clip.frames():
            gray = cv2.cvtColor(frame.image, cv2.COLOR_RGB2GRAY)
            small = cv2.resize(gray, None, fx=c.scale, fy=c.scale, interpolation=cv2.INTER_AREA)
            H, W = gray.shape
            grid = self.grid_ or (max(1, H // c.cell), max(1, W // c.cell))
            if self.grid_ is None:
                self.grid_ = grid
            yield FrameContext(frame.index, frame.image, small, c.scale, grid)
            if progress:
                progress(1)

    # -------------------------------------------------------------------------------------------------- fit
    def fit(self, clips: Sequence[VideoClip], *, progress: Callable[[int], None] | None = None) -> VideoModel:
        """Fit every cue on the normal clips, then normalise each on the held-out ones; returns self."""
        clips = list(clips)
        if not clips:
            raise EmptyDatasetError("fit() got no clips; give the folder of normal training clips")
        n_val = int(round(len(clips) * self.config.val_fraction)) if len(clips) > 1 else 0
        train, val = (clips[: len(clips) - n_val], clips[len(clips) - n_val:]) if n_val else (clips, clips)
        self.fit_problems_: list[str] = []
        for clip in train:
            for cue in self.cues.values():
                cue.reset()
            for ctx in self._contexts(clip, progress):
                for cue in self.cues.values():
                    cue.observe(ctx)
            self.fit_problems_ += clip.problems
        for cue in self.cues.values():
            cue.finish_fit()
        self.norm_ = {n: (0.0, 1.0) for n in self.cues}
        val_results = [self._score(clip, progress) for clip in val]
        self.norm_ = {}
        for name in self.cues:
            values = np.concatenate([r.raw[name] for r in val_results])
            med, hi = float(np.median(values)), float(np.quantile(values, 0.99))
            self.norm_[name] = (med, max(hi - med, 1e-6))
        fused = np.concatenate([self._fuse(r)[1] for r in val_results])
        self.threshold_ = float(np.quantile(fused, self.config.threshold_quantile))
        self.validation_ = {"clips": [c.name for c in val], "frames": int(len(fused)), "train_clips": len(train)}
        return self

    # ------------------------------------------------------------------------------------------------ score
    def _score(self, clip: VideoClip, progress=None) -> ClipResult:
        t0 = time.perf_counter()
        for cue in self.cues.values():
            cue.reset()
        frames, raw, maps, details, shape = [], {n: [] for n in self.cues}, [], [], (0, 0)
        spent = dict.fromkeys(self.cues, 0.0)
        for ctx in self._contexts(clip, progress):
            frames.append(ctx.index)
            shape = ctx.rgb.shape[:2]
            fused_map, det = np.zeros(ctx.grid, np.float32), {}
            for name, cue in self.cues.items():
                t1 = time.perf_counter()
                out = cue.step(ctx)
                spent[name] += time.perf_counter() - t1
                raw[name].append(out.score)
                med, spread = self.norm_[name]
                fused_map += self._weight(name) * np.maximum(out.map - med, 0) / spread
                det[name] = out.details
            maps.append(fused_map / self._total_weight())
            details.append(det)
        if not frames:
            raise DataError(f"clip {clip.name} has no readable frame: {'; '.join(clip.problems[:3])}")
        res = ClipResult(clip.name, np.array(frames), {n: np.array(v) for n, v in raw.items()}, {}, np.empty(0),
                         np.empty(0), np.stack(maps), details, shape, problems=list(clip.problems))
        res.normed, res.smoothed = self._fuse(res)
        res.fused = sum(self._weight(n) * v for n, v in res.normed.items()) / self._total_weight()
        res.seconds, res.cue_seconds = time.perf_counter() - t0, spent
        return res

    def _weight(self, name: str) -> float:
        return float(self.config.weights.get(name, 1.0))

    def _total_weight(self) -> float:
        return sum(self._weight(n) for n in self.cues) or 1.0

    def _fuse(self, res: ClipResult) -> tuple[dict[str, np.ndarray], np.ndarray]:
        normed = {n: (res.raw[n] - self.norm_[n][0]) / self.norm_[n][1] for n in self.cues}
        fused = sum(self._weight(n) * v for n, v in normed.items()) / self._total_weight()
        return normed, smooth_scores(fused, self.config.sigma)

    def score_clip(self, clip: VideoClip, *, progress: Callable[[int], None] | None = None,
                   reasoner: Any = None) -> ClipResult:
        """Score every readable frame of ``clip`` and find its explained events (``reasoner``: see :meth:`events`)."""
        if self.norm_ is None:
            raise NotFittedError("the video model is not fitted: call fit(normal_clips) or VideoModel.load(dir)")
        res = self._score(clip, progress)
        res.events = self.events(res, reasoner=reasoner)
        return res

    # ----------------------------------------------------------------------------------------------- events
    def events(self, res: ClipResult, *, reasoner: Any = None) -> list[Event]:
        """Contiguous runs of smoothed fused scores above the threshold, each with its region track and
        explanation: grounded by default; with a ``reasoner`` (e.g. ``create_reasoner("llamacpp")``) that
        reasoner explains the event's :class:`~vlm_ad.video.evidence.EventEvidence`, and when it gives no valid,
        grounded explanation the grounded one is kept with the failure in its ``flags`` (an unreachable backend
        still raises, unless the reasoner was created with ``fallback="grounded"``)."""
        c = self.config
        out = []
        rules = self.cues["objects"].rules_text() if "objects" in self.cues else []
        for a, b in find_runs(res.smoothed > self.threshold_, min_length=c.min_event, merge_gap=c.merge_gap):
            p = a + int(np.argmax(res.smoothed[a: b + 1]))
            det = res.details[p]
            ev = Event(res.clip, int(res.frames[a]), int(res.frames[b]), int(res.frames[p]),
                       round(float(res.smoothed[p]), 4), round(self.threshold_, 4),
                       {n: round(float(res.normed[n][p]), 3) for n in self.cues}, det,
                       [{"frame": int(res.frames[i]), "box": self.region_box(res, i)} for i in range(a, b + 1)], rules)
            ev.explanation = explain_event(ev, res.frame_shape)
            if reasoner is not None:
                ev.explanation = _explain_with(reasoner, ev, res.frame_shape, ev.explanation)
            out.append(ev)
        return out

    def region_box(self, res: ClipResult, i: int) -> list[int]:
        """The cited region of frame position ``i``: the box of the most anomalous object overlapping the map's
        peak component, else that component's box (full-resolution px)."""
        import cv2

        m = res.maps[i]
        gh, gw = m.shape
        H, W = res.frame_shape
        r, c = np.unravel_index(int(np.argmax(m)), m.shape)
        _, lab = cv2.connectedComponents((m >= 0.5 * m[r, c]).astype(np.uint8))
        ys, xs = np.nonzero(lab == lab[r, c])
        box = [int(xs.min() * W / gw), int(ys.min() * H / gh), int((xs.max() + 1) * W / gw),
               int((ys.max() + 1) * H / gh)]
        for o in res.details[i].get("objects", {}).get("objects", []):
            x0, y0, x1, y1 = o["box"]
            if x0 < box[2] and box[0] < x1 and y0 < box[3] and box[1] < y1:
                return list(o["box"])
        return box

    def full_map(self, res: ClipResult, i: int) -> np.ndarray:
        """The fused map of frame position ``i`` at full frame resolution, (H, W) float32."""
        import cv2

        H, W = res.frame_shape
        return cv2.resize(res.maps[i], (W, H), interpolation=cv2.INTER_LINEAR)

    # --------------------------------------------------------------------------------------------- persist
    def save(self, directory: str | Path) -> Path:
        """Write ``video_model.json`` and ``video_model.safetensors`` (plus ``appearance/`` for that cue)."""
        from safetensors.numpy import save

        if self.norm_ is None:
            raise NotFittedError("the video model is not fitted: nothing to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        metas, arrays = {}, {}
        for name, cue in self.cues.items():
            metas[name], arr = cue.state(directory)
            arrays |= {f"{name}.{k}": np.ascontiguousarray(v) for k, v in arr.items()}
        atomic_write_bytes(directory / "video_model.safetensors", save(arrays))
        meta = {"config": asdict(self.config), "cues": metas, "norm": self.norm_, "threshold": self.threshold_,
                "grid": list(self.grid_), "validation": getattr(self, "validation_", {})}
        atomic_write_bytes(directory / "video_model.json", json.dumps(meta, indent=2).encode())
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> VideoModel:
        """Load a model written by :meth:`save`."""
        from safetensors.numpy import load_file

        directory = Path(directory)
        path = directory / "video_model.json"
        if not path.exists():
            raise DataError(f"{directory} holds no video_model.json; give a folder written by 'vlm-ad video fit'")
        meta = json.loads(path.read_text())
        model = cls(VideoModelConfig(**meta["config"]))
        arrays = load_file(directory / "video_model.safetensors")
        for name, cue in model.cues.items():
            mine = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(name + ".")}
            cue.load_state(meta["cues"][name], mine, directory)
        model.norm_ = {k: tuple(v) for k, v in meta["norm"].items()}
        model.threshold_, model.grid_ = meta["threshold"], tuple(meta["grid"])
        model.validation_ = meta.get("validation", {})
        return model
