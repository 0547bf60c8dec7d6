"""The video model: cues fitted on normal clips, calibrated to false-alarm rates on held-out normal clips, fused,
events.

Fusion rule (what the score means): each cue's score is smoothed over time (``sigma``) and turned into a surprise,
-log10 of the share of normal calibration frames that score at least as high (:class:`TailCalibration`). The cue
surprises are combined (``fusion="mean"``, the default: their weighted mean, i.e. -log10 of the geometric mean of the
cues' false-alarm rates, Fisher's rule; ``"max"``: the most surprising cue, weighted) and the combination is
calibrated once more on the same normal frames, so the fused score is again -log10 of a false-alarm rate: "how unusual
is this frame", 2.0 = one normal frame in 100 scores this high, 3.0 = one in 1000. A cue with weight 0 explains but
does not vote.

No rule that sees only normal data can stop a cue that is wrong on new clips from pulling the fusion down: on UCSD
Ped2 (eval/results/video.md) the mean matched or beat the best single cue on both unseen halves with sound cues, and
lost less than the max when a known-bad objects variant was swapped in (the max adds every cue's false alarms on new
normal frames). What keeps a bad cue out is the benchmark's entry bar and its unseen half, not the fusion."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.artifacts import read_meta, write_meta
from vlm_ad.errors import ConfigError, DataError, EmptyDatasetError, NotFittedError
from vlm_ad.video.calibration import TailCalibration
from vlm_ad.video.cues import Cue, FrameContext, create_cue, list_cues
from vlm_ad.video.events import Event, explain_event, find_runs, smooth_scores
from vlm_ad.video.io import VideoClip

VIDEO_FORMAT = 2  # of video_model.json (see vlm_ad.artifacts); 2 = calibrated cues

__all__ = ["ClipResult", "VideoModel", "VideoModelConfig"]


@dataclass
class VideoModelConfig:
    """Settings of a :class:`VideoModel` (validated on construction).

    Attributes:
        cues: cue names to use (see ``list_cues()``).
        weights: fusion weight per cue (missing cues weigh 1; 0 = the cue explains events but does not vote).
        cue_options: per-cue keyword options for ``create_cue``.
        scale: working scale of the grayscale frame for motion and objects.
        cell: cell size of the shared map grid, in full-resolution pixels.
        sigma: temporal smoothing (Gaussian, frames) of each cue's score before calibration.
        fusion: ``"max"`` (the most surprising cue) or ``"mean"`` (weighted mean of the cue surprises).
        tail: calibration quantile above which false-alarm rates follow an exponential tail.
        val_fraction: share of the normal clips held out to calibrate the cues and set the event threshold.
        threshold_quantile: quantile of the fused calibration scores used as the event threshold.
        min_event: shortest event (frames). merge_gap: gaps up to this many frames join two events.
    """

    cues: list[str] = field(default_factory=lambda: ["motion", "objects", "appearance"])
    weights: dict[str, float] = field(default_factory=dict)
    cue_options: dict[str, dict] = field(default_factory=dict)
    scale: float = 0.5
    cell: int = 16
    sigma: float = 4.0
    fusion: str = "mean"
    tail: float = 0.9
    val_fraction: float = 0.25
    threshold_quantile: float = 0.995
    min_event: int = 5
    merge_gap: int = 5

    def __post_init__(self) -> None:
        unknown = [c for c in self.cues if c not in list_cues()]
        if unknown or not self.cues:
            raise ConfigError(f"unknown or no cues {unknown}; allowed: {', '.join(list_cues())}")
        if self.fusion not in ("max", "mean"):
            raise ConfigError(f"fusion must be 'max' or 'mean', got {self.fusion!r}")
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
        raw: cue -> (T,) raw cue scores. normed: cue -> (T,) surprise of the smoothed cue score, -log10 of the share
            of normal calibration frames scoring as high (2.0 = 1 in 100).
        fused: (T,) the fused surprise (see the module docstring). smoothed: (T,) the score events are found on;
            equal to ``fused`` (the cues are smoothed before calibration).
        maps: (T, gh, gw) float32 fused maps (1.0 = a cue's normal 99th percentile). details: per frame, cue -> facts.
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
        self.calibration_: dict[str, TailCalibration] | None = None
        self.grid_: tuple[int, int] | None = None
        self.calibration_raw_: list[dict[str, np.ndarray]] = []  # raw cue scores of the calibration clips
        self.validation_: dict[str, Any] = {}  # what fit measured on its held-out normal clips

    # ------------------------------------------------------------------------------------------------ frames
    def _contexts(self, clip: VideoClip, progress: Callable[[int], None] | None = None):
        import cv2

        c = self.config
        prev = None
        for frame in clip.frames():
            gray = cv2.cvtColor(frame.image, cv2.COLOR_RGB2GRAY)
            small = cv2.resize(gray, None, fx=c.scale, fy=c.scale, interpolation=cv2.INTER_AREA)
            H, W = gray.shape
            grid = self.grid_ or (max(1, H // c.cell), max(1, W // c.cell))
            if self.grid_ is None:
                self.grid_ = grid
            yield FrameContext(frame.index, frame.image, small, c.scale, grid, prev)
            prev = small
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
        self.calibration_ = None
        val_results = [self._score(clip, progress) for clip in val]
        self.calibrate([r.raw for r in val_results])
        self.validation_ = {"clips": [c.name for c in val], "frames": int(sum(len(r.frames) for r in val_results)),
                            "train_clips": len(train)}
        return self

    def calibrate(self, raws: Sequence[dict[str, np.ndarray]]) -> VideoModel:
        """Calibrate the fitted cues on the raw scores of normal calibration clips (one cue -> (T,) dict per clip):
        map normalisation, false-alarm rates per cue and of the fusion, and the event threshold; returns self."""
        if not raws:
            raise EmptyDatasetError("calibrate() got no clips: give held-out normal clips")
        c = self.config
        self.calibration_raw_ = [{n: np.asarray(r[n], np.float64) for n in self.cues} for r in raws]
        self.norm_, self.calibration_ = {}, {}
        for name in self.cues:
            values = np.concatenate([r[name] for r in raws])
            med, hi = float(np.median(values)), float(np.quantile(values, 0.99))
            self.norm_[name] = (med, max(hi - med, 1e-6))
            smoothed = np.concatenate([smooth_scores(r[name], c.sigma) for r in raws])
            self.calibration_[name] = TailCalibration.fit(smoothed, tail=c.tail)
        combined = np.concatenate([self._combine(self._surprises(r)) for r in raws])
        self.calibration_["_fused"] = TailCalibration.fit(combined, tail=c.tail)
        fused = self.calibration_["_fused"].surprise(combined)
        self.threshold_ = float(np.quantile(fused, c.threshold_quantile))
        return self

    def recalibrated(self, *, sigma: float | None = None, fusion: str | None = None,
                     weights: dict[str, float] | None = None) -> VideoModel:
        """Change the smoothing, fusion rule or weights of a fitted model and calibrate again on the normal
        calibration scores it kept (no refitting, no new data); returns self."""
        raws = self.calibration_raw_
        if not raws:
            raise ConfigError("this video model kept no calibration scores (it was saved by an older version), so "
                              "its smoothing and fusion cannot change; refit it with 'vlm-ad video fit'")
        changes = {k: v for k, v in (("sigma", sigma), ("fusion", fusion), ("weights", weights)) if v is not None}
        self.config = VideoModelConfig(**(asdict(self.config) | changes))
        return self.calibrate(raws)

    def _surprises(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: self.calibration_[n].surprise(smooth_scores(raw[n], self.config.sigma)) for n in self.cues}

    def _combine(self, surprises: dict[str, np.ndarray]) -> np.ndarray:
        voting = {n: v for n, v in surprises.items() if self._weight(n) > 0}
        if not voting:
            raise ConfigError(f"every cue weighs 0 ({self.config.weights}); give at least one cue a positive weight")
        w = {n: self._weight(n) for n in voting}
        if self.config.fusion == "max":
            return np.max(np.stack([w[n] * v for n, v in voting.items()]), axis=0)
        return sum(w[n] * v for n, v in voting.items()) / sum(w.values())

    def fuse(self, raw: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Raw cue scores of one clip (cue -> (T,)) -> (cue surprises, fused surprise); see the module docstring."""
        if not self.calibration_:
            raise NotFittedError("the video model is not calibrated: call fit(normal_clips) or VideoModel.load(dir)")
        normed = self._surprises(raw)
        return normed, self.calibration_["_fused"].surprise(self._combine(normed))

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
        if self.calibration_:
            res.normed, res.fused = self.fuse(res.raw)
            res.smoothed = res.fused
        res.seconds, res.cue_seconds = time.perf_counter() - t0, spent
        return res

    def _weight(self, name: str) -> float:
        return float(self.config.weights.get(name, 1.0))

    def _total_weight(self) -> float:
        return sum(self._weight(n) for n in self.cues) or 1.0

    def score_clip(self, clip: VideoClip, *, progress: Callable[[int], None] | None = None,
                   reasoner: Any = None) -> ClipResult:
        """Score every readable frame of ``clip`` and find its explained events (``reasoner``: see :meth:`events`)."""
        if not self.calibration_:
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

        if not self.calibration_:
            raise NotFittedError("the video model is not fitted: nothing to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        metas, arrays = {}, {}
        for name, cue in self.cues.items():
            metas[name], arr = cue.state(directory)
            arrays |= {f"{name}.{k}": np.ascontiguousarray(v) for k, v in arr.items()}
        for i, raw in enumerate(self.calibration_raw_):  # to recalibrate after loading
            arrays |= {f"_calibration.{i}.{n}": np.ascontiguousarray(v) for n, v in raw.items()}
        atomic_write_bytes(directory / "video_model.safetensors", save(arrays))
        meta = {"config": asdict(self.config), "cues": metas, "norm": self.norm_, "threshold": self.threshold_,
                "calibration": {k: v.to_dict() for k, v in self.calibration_.items()},
                "grid": list(self.grid_), "validation": self.validation_}
        write_meta(directory / "video_model.json", kind="video-model", version=VIDEO_FORMAT, meta=meta)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> VideoModel:
        """Load a model written by :meth:`save`."""
        from safetensors.numpy import load_file

        directory = Path(directory)
        # version 1 (no format_version in the file) predates cue calibration and is refused with the remedy
        meta = read_meta(directory / "video_model.json", kind="video-model", version=VIDEO_FORMAT, what="video model",
                         remedy="refit it with 'vlm-ad video fit'")
        try:
            model = cls(VideoModelConfig(**meta["config"]))
            arrays = load_file(directory / "video_model.safetensors")
        except (KeyError, TypeError, OSError, ValueError) as exc:
            raise DataError(f"{directory} is not a readable video model ({type(exc).__name__}: {exc}); refit it with "
                            "'vlm-ad video fit'") from None
        for name, cue in model.cues.items():
            mine = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(name + ".")}
            cue.load_state(meta["cues"][name], mine, directory)
        model.norm_ = {k: tuple(v) for k, v in meta["norm"].items()}
        model.calibration_ = {k: TailCalibration.from_dict(v) for k, v in meta["calibration"].items()}
        model.threshold_, model.grid_ = meta["threshold"], tuple(meta["grid"])
        model.validation_ = meta.get("validation", {})
        n_cal = 1 + max((int(k.split(".")[1]) for k in arrays if k.startswith("_calibration.")), default=-1)
        model.calibration_raw_ = [{n: arrays[f"_calibration.{i}.{n}"] for n in model.cues} for i in range(n_cal)]
        return model
