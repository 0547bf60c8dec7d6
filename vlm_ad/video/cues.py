"""The video cues, each a registered component: ``create_cue(name, **kw)``, ``list_cues()``.

Every cue follows one streaming contract. During fitting the model calls ``reset()`` at the start of each
normal clip, ``observe(ctx)`` for each frame, then ``finish_fit()`` once. When scoring it calls ``reset()``
per clip and ``step(ctx)`` per frame, which returns a :class:`CueStep`: a frame score (higher = more
anomalous), a (gh, gw) map on the model's cell grid, and details an explanation can quote.

Registered names:
    appearance  PatchCore (the image detector, reused) on frames: patch distance to normal training frames
    flow        the bare baseline: largest optical-flow magnitude over its normal 99.9th percentile
    motion      dense optical flow (OpenCV Farneback): cell speed vs the per-location normal speed (shrunk to the
                whole frame's where traffic was thin), and direction
    objects     background subtraction (MOG2) -> blobs -> tracks; speed, size, direction, dwell vs readable rules
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlm_ad.errors import ConfigError, NotFittedError
from vlm_ad.registry import Registry
from vlm_ad.video.tracking import Tracker, blobs_from_mask, direction_bin, direction_words

__all__ = ["CUES", "Cue", "CueStep", "FrameContext", "create_cue", "list_cues", "moving_average"]

CUES: Registry[Cue] = Registry("cue")
_SPEED_EDGES = np.array([0, .25, .5, .75, 1, 1.25, 1.5, 1.75, 2, 2.5, 3, 3.5, 4, 5, 6, 8, 10, 15, 20, 1e9], np.float32)


@dataclass
class FrameContext:
    """What every cue sees of one frame.

    Attributes:
        index: frame index in its clip.
        rgb: (H, W, 3) uint8 full-resolution frame.
        gray: (h, w) uint8 grayscale frame at ``scale`` (motion and objects work on it).
        scale: gray size / full size.
        grid: (gh, gw) cell grid shared by every cue's map.
        prev: (h, w) uint8 previous working frame of the same clip, None on its first frame.
    """

    index: int
    rgb: np.ndarray
    gray: np.ndarray
    scale: float
    grid: tuple[int, int]
    prev: np.ndarray | None = None
    _flow: np.ndarray | None = field(default=None, repr=False)

    def flow(self) -> np.ndarray | None:
        """(h, w, 2) dense optical flow (OpenCV Farneback) from ``prev``, in full-resolution px/frame; None on a
        clip's first frame. Computed once per frame and shared by the cues that need it."""
        import cv2

        if self._flow is None and self.prev is not None and self.prev.shape == self.gray.shape:
            self._flow = cv2.calcOpticalFlowFarneback(self.prev, self.gray, None, 0.5, 3, 15, 3, 5, 1.2, 0) / self.scale
        return self._flow


@dataclass
class CueStep:
    """One cue's output for one frame: ``score`` (float), ``map`` (gh, gw) float32, ``details`` (quotable facts)."""

    score: float
    map: np.ndarray
    details: dict = field(default_factory=dict)


def _cells(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Block-average a (h, w[, C]) array onto the (gh, gw) grid."""
    import cv2

    return cv2.resize(values.astype(np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA)


class Cue:
    """Base class of the registered cues (see the module docstring for the contract)."""

    name = "cue"

    def reset(self) -> None:
        """Start a new clip."""

    def observe(self, ctx: FrameContext) -> None:
        """Learn from one normal frame."""
        raise NotImplementedError

    def finish_fit(self) -> Cue:
        """Summarise what was observed; returns self."""
        return self

    def step(self, ctx: FrameContext) -> CueStep:
        """Score one frame."""
        raise NotImplementedError

    def state(self, directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
        """JSON-able settings and learned arrays to save (``directory`` is for cues that save files)."""
        raise NotImplementedError

    def load_state(self, meta: dict, arrays: dict[str, np.ndarray], directory: Path) -> Cue:
        """Restore what :meth:`state` returned; returns self."""
        raise NotImplementedError

    def _need_fit(self, fitted: bool) -> None:
        if not fitted:
            raise NotFittedError(f"the {self.name} cue is not fitted: fit the video model on normal clips first")


# ------------------------------------------------------------------------------------------------------- motion
def _direction(vec: np.ndarray) -> np.ndarray:
    """(...,) compass bin 0..7 of (..., 2) flow vectors (0 = right, 2 = down)."""
    return (np.round(np.arctan2(vec[..., 1], vec[..., 0]) / (np.pi / 4)).astype(int)) % 8


class MotionCue(Cue):
    """Optical-flow speed and direction per cell against per-location normal statistics, shrunk to the frame's.

    Each cell keeps a histogram of its *moving* speeds (above ``moving``) in the normal clips, mixed with the
    whole-frame histogram of moving speeds at a weight of ``prior`` samples: where the normal clips had little
    traffic the limit is (nearly) the whole-frame one, so one walker there does not look like a bicycle.

    Args:
        quantile: quantile of a cell's (shrunk) moving speeds taken as "the fastest normal motion here".
        prior: weight, in moving samples, of the whole-frame distribution mixed into each cell's own.
        pool: cells are pool x pool blocks of the model grid (2 = cells twice as wide and tall).
        direction_weight: weight of the direction surprise, -log(8 p), added for moving cells.
        moving: speed (px/frame, full resolution) above which a cell counts as moving.
        top_k: the frame score is the mean of the ``top_k`` highest cell scores.
    """

    name = "motion"

    def __init__(self, *, quantile: float = 0.99, prior: float = 500.0, pool: int = 2,
                 direction_weight: float = 0.25, moving: float = 0.5, top_k: int = 3) -> None:
        self.cfg = {"quantile": quantile, "prior": prior, "pool": pool, "direction_weight": direction_weight,
                    "moving": moving, "top_k": top_k}
        self._speed_hist: np.ndarray | None = None
        self._dir_hist: np.ndarray | None = None
        self.max_speed_: np.ndarray | None = None  # (gh', gw') px/frame on the pooled grid
        self.dir_prob_: np.ndarray | None = None  # (gh', gw', 8)

    def _grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        p = self.cfg["pool"]
        return -(-grid[0] // p), -(-grid[1] // p)

    def _cells_flow(self, ctx: FrameContext) -> tuple[np.ndarray, np.ndarray] | None:
        """(gh', gw') cell speed in full-resolution px/frame and (gh', gw', 2) cell mean flow, or None."""
        flow = ctx.flow()  # (h, w, 2)
        if flow is None:
            return None
        grid = self._grid(ctx.grid)
        return _cells(np.linalg.norm(flow, axis=2), grid), _cells(flow, grid)

    def observe(self, ctx: FrameContext) -> None:
        out = self._cells_flow(ctx)
        if out is None:
            return
        speed, vec = out
        gh, gw = speed.shape
        if self._speed_hist is None:
            self._speed_hist = np.zeros((gh, gw, len(_SPEED_EDGES) - 1), np.float64)
            self._dir_hist = np.zeros((gh, gw, 8), np.float64)
        rows, cols = np.nonzero(speed > self.cfg["moving"])
        b = np.clip(np.searchsorted(_SPEED_EDGES, speed[rows, cols], side="right") - 1, 0, len(_SPEED_EDGES) - 2)
        np.add.at(self._speed_hist, (rows, cols, b), 1)
        np.add.at(self._dir_hist, (rows, cols, _direction(vec)[rows, cols]), 1)

    @staticmethod
    def _shrink(hist: np.ndarray, prior: float) -> np.ndarray:
        """Each cell's histogram plus ``prior`` samples of the whole-frame one, normalised to probabilities."""
        whole = hist.sum(axis=(0, 1)) + 1e-9
        h = hist + prior * whole / whole.sum()
        return h / h.sum(axis=2, keepdims=True)

    def finish_fit(self) -> MotionCue:
        from scipy.ndimage import maximum_filter

        if self._speed_hist is None:
            raise NotFittedError("the motion cue saw no frame pairs: give it clips of at least two frames")
        cdf = np.cumsum(self._shrink(self._speed_hist, self.cfg["prior"]), axis=2)
        idx = np.argmax(cdf >= self.cfg["quantile"] - 1e-9, axis=2)
        upper = _SPEED_EDGES[np.minimum(idx + 1, len(_SPEED_EDGES) - 2)]
        self.max_speed_ = np.maximum(maximum_filter(upper, size=3), 2 * self.cfg["moving"]).astype(np.float32)
        self.dir_prob_ = self._shrink(self._dir_hist + 1.0 / 8, self.cfg["prior"]).astype(np.float32)
        return self

    def step(self, ctx: FrameContext) -> CueStep:
        self._need_fit(self.max_speed_ is not None)
        out = self._cells_flow(ctx)
        if out is None:
            return CueStep(0.0, np.zeros(ctx.grid, np.float32))
        speed, vec = out
        ratio = speed / self.max_speed_
        p = np.take_along_axis(self.dir_prob_, _direction(vec)[..., None], axis=2)[..., 0]
        surprise = np.maximum(0.0, -np.log(8 * p)) * (speed > self.cfg["moving"])
        cell = (ratio + self.cfg["direction_weight"] * surprise).astype(np.float32)
        k = min(self.cfg["top_k"], cell.size)
        score = float(np.sort(cell, axis=None)[-k:].mean())
        r, c = np.unravel_index(int(np.argmax(cell)), cell.shape)
        pool = self.cfg["pool"]
        details = {"cell": [int(r) * pool, int(c) * pool], "speed": round(float(speed[r, c]), 2),
                   "normal_max_speed": round(float(self.max_speed_[r, c]), 2),
                   "ratio": round(float(ratio[r, c]), 2), "direction": direction_words(tuple(vec[r, c])),
                   "direction_probability": round(float(p[r, c]), 3)}
        full = np.repeat(np.repeat(cell, pool, axis=0), pool, axis=1)[: ctx.grid[0], : ctx.grid[1]]
        return CueStep(score, full, details)

    def state(self, directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
        self._need_fit(self.max_speed_ is not None)
        return dict(self.cfg), {"max_speed": self.max_speed_, "dir_prob": self.dir_prob_}

    def load_state(self, meta: dict, arrays: dict[str, np.ndarray], directory: Path) -> MotionCue:
        self.cfg.update(meta)
        self.max_speed_, self.dir_prob_ = arrays["max_speed"], arrays["dir_prob"]
        return self


# --------------------------------------------------------------------------------------------------------- flow
def moving_average(scores: np.ndarray, window: int = 15) -> np.ndarray:
    """Centred moving average over ``window`` frames (the flow baseline's temporal smoothing)."""
    from scipy.ndimage import uniform_filter1d

    scores = np.asarray(scores, np.float64)
    return scores if window <= 1 or len(scores) < 2 else uniform_filter1d(scores, window, mode="nearest")


class FlowCue(Cue):
    """The bare optical-flow baseline: a frame's largest flow magnitude over its normal ``quantile``.

    No per-location statistics: the score is max |flow| (full-resolution px/frame) divided by the ``quantile``
    (default 99.9th percentile) of that maximum over the normal frames, so 1.0 = as fast as the fastest normal
    frames. With a 15-frame :func:`moving_average` it is the baseline every other cue is measured against.
    """

    name = "flow"

    def __init__(self, *, quantile: float = 0.999) -> None:
        self.cfg = {"quantile": quantile}
        self._max: list[float] = []
        self.limit_: float | None = None

    def observe(self, ctx: FrameContext) -> None:
        flow = ctx.flow()
        if flow is not None:
            self._max.append(float(np.sqrt((flow ** 2).sum(axis=2).max())))

    def finish_fit(self) -> FlowCue:
        if not self._max:
            raise NotFittedError("the flow cue saw no frame pairs: give it clips of at least two frames")
        self.limit_ = max(float(np.quantile(self._max, self.cfg["quantile"])), 1e-3)
        self._max = []
        return self

    def step(self, ctx: FrameContext) -> CueStep:
        self._need_fit(self.limit_ is not None)
        flow = ctx.flow()
        if flow is None:
            return CueStep(0.0, np.zeros(ctx.grid, np.float32))
        mag = np.sqrt((flow ** 2).sum(axis=2))
        top = float(mag.max())
        return CueStep(top / self.limit_, _cells(mag, ctx.grid) / self.limit_,
                       {"max_speed": round(top, 2), "normal_max_speed": round(self.limit_, 2)})

    def state(self, directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
        self._need_fit(self.limit_ is not None)
        return dict(self.cfg) | {"limit": self.limit_}, {}

    def load_state(self, meta: dict, arrays: dict[str, np.ndarray], directory: Path) -> FlowCue:
        self.limit_ = meta.pop("limit")
        self.cfg.update(meta)
        return self


# ------------------------------------------------------------------------------------------------------ objects
NORMAL_KIND = "an object like the normal ones in size and speed"  # object_kind() of an unremarkable object


def object_kind(size_ratio: float, speed_ratio: float | None, *, margin: float = 1.5) -> str:
    """What an object is like, from its size and speed relative to the largest / fastest *normal* object of its zone.

    No class labels are involved: the words only compare with the normal objects (on a walkway, the walkers).
    ``margin``: how far beyond the normal maximum counts as clearly beyond it.
    """
    fast = speed_ratio is not None and speed_ratio > margin
    large = size_ratio > margin
    if fast and not large:
        return "a rider-like object: normal size but faster than any normal object (e.g. bicycle, skateboard)"
    if fast and large:
        return "a vehicle-like object: larger and faster than any normal object"
    if large:
        return "a large object at normal speed (a group, a cart or a slow vehicle)"
    return NORMAL_KIND


def _flow_motion(flow: np.ndarray | None, fg: np.ndarray, box: list[int], scale: float) -> dict:
    """Speed (90th percentile of |flow|), mean flow ``_v`` and heading of the foreground pixels in ``box``."""
    if flow is None:
        return {"speed": None, "direction": None, "_v": None}
    x0, y0, x1, y1 = (int(round(v * scale)) for v in box)
    f = flow[y0: max(y1, y0 + 1), x0: max(x1, x0 + 1)]  # (bh, bw, 2)
    inside = fg[y0: max(y1, y0 + 1), x0: max(x1, x0 + 1)] > 0
    f = f[inside] if inside.any() else f.reshape(-1, 2)
    speed = float(np.quantile(np.linalg.norm(f, axis=1), 0.9))
    v = tuple(float(x) for x in f.mean(axis=0))
    return {"speed": round(speed, 2), "direction": direction_words(v) if math.hypot(*v) >= 0.3 else None, "_v": v}


class ObjectsCue(Cue):
    """Background subtraction -> blobs -> tracks; each object's attributes against rules learned on normal clips.

    Args:
        min_area: smallest blob kept, in pixels of the working (scaled) frame.
        var_threshold: MOG2 variance threshold.
        min_samples: observations a zone needs for its own rule (else the whole-frame rule applies).
        quantiles: (low, high) quantiles of normal attributes that bound a rule's range.
        learning_rate: MOG2 learning rate after the start from the learned empty scene.
        warmup: frames at the start of each normal clip not used for rules (the subtractor is still learning).
        size_weight: weight of the size ratio in an object's score. Crowds merge into one blob far larger than any
            normal walker, so by default size only names the object (and is cited when it breaks the rule) while
            speed and heading score it.
        speed_from: ``"flow"``: an object's speed is the 90th percentile of the optical-flow magnitude over its
            foreground pixels and its heading the mean flow there, so a crowd merging into one blob still moves at
            walking speed and a cyclist inside it still stands out (the default); ``"track"``: the displacement of
            the blob's centroid over the last frames, which jumps when blobs merge or split (on UCSD Ped2 it held
            on Test001-003 but fell to 0.70 frame AUROC on Test004-006, eval/results/video.md).
    """

    name = "objects"

    def __init__(self, *, min_area: int = 12, var_threshold: float = 25.0, min_samples: int = 30,
                 quantiles: tuple[float, float] = (0.01, 0.99), learning_rate: float = 0.002,
                 warmup: int = 10, size_weight: float = 0.0, speed_from: str = "flow") -> None:
        if speed_from not in ("flow", "track"):
            raise ConfigError(f"speed_from must be 'flow' or 'track', got {speed_from!r}")
        self.cfg = {"min_area": min_area, "var_threshold": var_threshold, "min_samples": min_samples,
                    "quantiles": list(quantiles), "learning_rate": learning_rate, "warmup": warmup,
                    "size_weight": size_weight, "speed_from": speed_from}
        self._bg_samples: list[np.ndarray] = []
        self._obs: list[tuple[str, float | None, float, int | None]] = []
        self._dwell: list[int] = []
        self._n = 0
        self.background_: np.ndarray | None = None
        self.rules_: dict[str, dict] | None = None
        self._mog = None
        self._tracker: Tracker | None = None
        self._shape: tuple[int, int] = (0, 0)

    def reset(self) -> None:
        import cv2

        if self._tracker is not None and self.rules_ is None:
            self._dwell += [t.frames[-1] - t.frames[0] + 1 for t in self._tracker.tracks + self._tracker.finished
                            if len(t.frames) >= 3]
        self._mog = cv2.createBackgroundSubtractorMOG2(history=300, varThreshold=self.cfg["var_threshold"],
                                                       detectShadows=False)
        if self.background_ is not None:  # start from the learned empty scene, not from the first frame
            for _ in range(3):
                self._mog.apply(self.background_, learningRate=1.0 if _ == 0 else 0.5)
        self._tracker = Tracker()

    def _objects(self, ctx: FrameContext) -> list[dict]:
        import cv2

        if self._mog is None:
            self.reset()
        # once the empty scene is known, learn slowly so that slow or stopping objects are not absorbed
        fg = self._mog.apply(ctx.gray, learningRate=-1 if self.background_ is None else self.cfg["learning_rate"])
        fg = cv2.morphologyEx((fg > 127).astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
        fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
        blobs = blobs_from_mask(fg, scale=ctx.scale, min_area=self.cfg["min_area"])
        self._shape = ctx.rgb.shape[:2]
        objs = [t.attributes(self._shape) | {"_v": t.velocity()} for t in self._tracker.update(ctx.index, blobs)]
        if self.cfg["speed_from"] == "flow":
            flow = ctx.flow()
            for o in objs:
                o.update(_flow_motion(flow, fg, o["box"], ctx.scale))
        return objs

    def observe(self, ctx: FrameContext) -> None:
        self._n += 1
        if self._n % 10 == 1 and len(self._bg_samples) < 300:
            self._bg_samples.append(ctx.gray.copy())
        objects = self._objects(ctx)
        if ctx.index < self.cfg["warmup"]:
            return
        for o in objects:
            d = None if o["_v"] is None or o["speed"] < 0.3 else direction_bin(o["_v"])
            self._obs.append((o["zone"], o["speed"], o["size"], d))

    def finish_fit(self) -> ObjectsCue:
        self.reset()
        if not self._bg_samples:
            raise NotFittedError("the objects cue saw no frames: give it normal clips")
        self.background_ = np.median(np.stack(self._bg_samples), axis=0).astype(np.uint8)
        self.rules_ = {"all": self._rule(self._obs)}
        for zone in sorted({o[0] for o in self._obs}):
            obs = [o for o in self._obs if o[0] == zone]
            if sum(o[1] is not None for o in obs) >= self.cfg["min_samples"]:
                self.rules_[zone] = self._rule(obs)
        self.rules_["all"]["dwell_max"] = int(max(self._dwell, default=0))
        self._obs, self._bg_samples = [], []
        return self

    def _rule(self, obs: list) -> dict:
        lo, hi = self.cfg["quantiles"]
        speeds = np.array([o[1] for o in obs if o[1] is not None] or [0.0])
        sizes = np.array([o[2] for o in obs] or [1.0])
        dirs = np.bincount([o[3] for o in obs if o[3] is not None], minlength=8).astype(float)
        share = dirs / max(1.0, dirs.sum())
        return {"speed": [round(float(np.quantile(speeds, lo)), 2), round(float(np.quantile(speeds, hi)), 2)],
                "size": [round(float(np.quantile(sizes, lo)), 1), round(float(np.quantile(sizes, hi)), 1)],
                "directions": [direction_words((math.cos(b * math.pi / 4), math.sin(b * math.pi / 4)))
                               for b in range(8) if share[b] >= 0.05],
                "samples": len(obs)}

    def rule_for(self, zone: str) -> tuple[str, dict]:
        """The rule that applies in ``zone`` (its own, else the whole-frame one) and its name."""
        self._need_fit(self.rules_ is not None)
        return (zone, self.rules_[zone]) if zone in self.rules_ else ("all", self.rules_["all"])

    def rules_text(self) -> list[str]:
        """The normal ranges as readable rules, one sentence per zone."""
        self._need_fit(self.rules_ is not None)
        out = []
        for zone, r in self.rules_.items():
            where = "anywhere in the frame" if zone == "all" else f"in the {zone}"
            heading = ", ".join(r["directions"]) or "nowhere in particular"
            out.append(f"objects {where} move at {r['speed'][0]:.1f}-{r['speed'][1]:.1f} px/frame, heading "
                       f"{heading}, {r['size'][0]:.0f}-{r['size'][1]:.0f} px in size ({r['samples']} observations)")
        return out

    def _judge(self, o: dict) -> tuple[float, list[str]]:
        """(score, broken rules): the score is the largest of the weighted size ratio, the speed ratio and a
        heading penalty; the broken rules quote the rule used (quantile, zone, observations) and come in the order
        of what scored most, so a size that only names the object is cited after a speed that scored."""
        zone_name, r = self.rule_for(o["zone"])
        where = "anywhere" if zone_name == "all" else f"in the {zone_name}"
        rule = f"{round(100 * self.cfg['quantiles'][1]):d}th percentile of {r['samples']} normal objects {where}"
        size_ratio, broken = o["size"] / max(r["size"][1], 1.0), []  # broken: (what it scored, text)
        size_score = self.cfg["size_weight"] * size_ratio
        scores = [size_score]
        speed_ratio = None if o["speed"] is None else o["speed"] / max(r["speed"][1], 0.1)
        o["kind"] = object_kind(size_ratio, speed_ratio)
        if size_ratio > 1:
            scored = "" if size_score else "; size names the object but does not score it"
            broken.append((size_score, f"size {o['size']:.0f} px > {r['size'][1]:.0f} px (size rule: the {rule}"
                                       f"{scored})"))
        if speed_ratio is not None:
            scores.append(speed_ratio)
            if speed_ratio > 1:
                broken.append((speed_ratio, f"speed {o['speed']:.2f} px/frame is {speed_ratio:.1f}x "
                                            f"{r['speed'][1]:.2f} px/frame (speed rule: the {rule})"))
        if o["direction"] and r["directions"] and o["direction"] not in r["directions"]:
            scores.append(max(scores) + 0.5)
            broken.append((scores[-1], f"heading {o['direction']}, while normal objects {where} head "
                                       f"{', '.join(r['directions'])}"))
        dwell_max = self.rules_["all"].get("dwell_max", 0)
        if dwell_max and o["dwell"] > dwell_max:
            broken.append((0.0, f"stays {o['dwell']} frames, longer than any normal object ({dwell_max})"))
        return float(max(scores)), [text for _, text in sorted(broken, key=lambda b: -b[0])]

    def step(self, ctx: FrameContext) -> CueStep:
        self._need_fit(self.rules_ is not None)
        grid = np.zeros(ctx.grid, np.float32)
        objs = []
        H, W = ctx.rgb.shape[:2]
        for o in self._objects(ctx):
            o.pop("_v")
            o["score"], o["broken"] = self._judge(o)
            o["score"] = round(o["score"], 3)
            x0, y0, x1, y1 = o["box"]
            gh, gw = ctx.grid
            sl = (slice(y0 * gh // H, max(y0 * gh // H + 1, -(-y1 * gh // H))),
                  slice(x0 * gw // W, max(x0 * gw // W + 1, -(-x1 * gw // W))))
            grid[sl] = np.maximum(grid[sl], o["score"])
            objs.append(o)
        objs.sort(key=lambda o: -o["score"])
        return CueStep(objs[0]["score"] if objs else 0.0, grid, {"objects": objs[:5]})

    def state(self, directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
        self._need_fit(self.rules_ is not None)
        return dict(self.cfg) | {"rules": self.rules_}, {"background": self.background_}

    def load_state(self, meta: dict, arrays: dict[str, np.ndarray], directory: Path) -> ObjectsCue:
        self.rules_ = meta.pop("rules")
        self.cfg.update(meta)
        self.background_ = arrays["background"]
        return self


# --------------------------------------------------------------------------------------------------- appearance
class AppearanceCue(Cue):
    """The PatchCore image detector (``vlm_ad.detectors``, reused as is) on every ``stride``-th frame.

    Args:
        backbone: detector backbone name.
        sample_every: fit on every ``sample_every``-th normal frame (the memory bank's subsample).
        max_frames: at most this many normal frames in the memory bank.
        stride: score every ``stride``-th frame; the frames between reuse the last score and map.
        **detector_kw: passed to ``create_detector("patchcore", ...)`` (e.g. ``coreset``, ``image_size``).
    """

    name = "appearance"

    def __init__(self, *, backbone: str = "efficientnet-lite0", sample_every: int = 10, max_frames: int = 120,
                 stride: int = 1, **detector_kw: Any) -> None:
        self.cfg = {"backbone": backbone, "sample_every": sample_every, "max_frames": max_frames, "stride": stride,
                    # square: the input the video defaults were chosen with (eval/results/video.md)
                    "detector": {"coreset": 0.1, "image_size": 224, "geometry": "square"} | detector_kw}
        self._frames: list[np.ndarray] = []
        self._n = 0
        self._last: CueStep | None = None
        self.detector_ = None

    def reset(self) -> None:
        self._last = None

    def observe(self, ctx: FrameContext) -> None:
        if self._n % self.cfg["sample_every"] == 0 and len(self._frames) < self.cfg["max_frames"]:
            self._frames.append(ctx.rgb)
        self._n += 1

    def finish_fit(self) -> AppearanceCue:
        from vlm_ad.detectors import create_detector

        self.detector_ = create_detector("patchcore", backbone=self.cfg["backbone"], **self.cfg["detector"])
        self.detector_.fit(self._frames)
        self._frames = []
        return self

    def step(self, ctx: FrameContext) -> CueStep:
        self._need_fit(self.detector_ is not None)
        if self._last is not None and ctx.index % self.cfg["stride"] != 0:
            return self._last
        amap = self.detector_.predict([ctx.rgb])[0]
        self._last = CueStep(amap.score, _cells(amap.map, ctx.grid), {"patch_distance": round(amap.score, 4)})
        return self._last

    def state(self, directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
        self._need_fit(self.detector_ is not None)
        self.detector_.save(directory / "appearance")
        return dict(self.cfg), {}

    def load_state(self, meta: dict, arrays: dict[str, np.ndarray], directory: Path) -> AppearanceCue:
        from vlm_ad.detectors import load_detector

        self.cfg.update(meta)
        self.detector_ = load_detector(directory / "appearance")
        return self


@CUES.register("appearance", description="PatchCore patch distance to normal training frames (reused detector)")
def _appearance(**kw: Any) -> Cue:
    return AppearanceCue(**kw)


@CUES.register("flow", description="bare baseline: largest optical-flow magnitude over its normal 99.9th percentile")
def _flow(**kw: Any) -> Cue:
    return FlowCue(**kw)


@CUES.register("motion", description="optical-flow speed and direction per cell vs per-location normal statistics")
def _motion(**kw: Any) -> Cue:
    return MotionCue(**kw)


@CUES.register("objects", description="tracked foreground objects: speed, size, direction, dwell vs normal rules")
def _objects(**kw: Any) -> Cue:
    return ObjectsCue(**kw)


def create_cue(name: str, **kw: Any) -> Cue:
    """Build the cue registered as ``name`` (``appearance``, ``flow``, ``motion``, ``objects``) with its settings."""
    return CUES.create(name, **kw)


def list_cues(pattern: str | None = None) -> list[str]:
    """Registered cue names, optionally filtered by a shell-style pattern."""
    return CUES.names(pattern)
