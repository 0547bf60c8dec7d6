"""Scores -> calibrated surprise: -log10 of the share of normal calibration frames that score at least as high.

A surprise of 2.0 means "1 in 100 normal frames scores this high", 3.0 "1 in 1000". Cues measured in unrelated
units (px/frame ratios, patch distances, rule ratios) become comparable, and a cue that is noisy on normal data
gets a flat, low surprise instead of a large raw value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vlm_ad.errors import ConfigError, EmptyDatasetError

__all__ = ["TailCalibration"]

@dataclass
class TailCalibration:
    """The false-alarm rate of a score on normal calibration frames, with an exponential tail beyond the data.

    Up to the ``tail`` quantile the rate is the empirical share of calibration scores >= s (interpolated between
    ``quantiles`` at probability ``levels``). Above it the excesses are modelled as exponential with mean ``beta``
    (a generalised Pareto tail of shape 0), so scores beyond every calibration frame keep their order instead of
    all getting the same 1/n.

    Attributes:
        levels: probability levels from 0 to ``tail``. quantiles: the calibration scores' quantiles at them.
        tail: the level where the exponential tail starts. beta: mean excess of the scores above it.
        frames: number of calibration scores.
    """

    levels: list[float]
    quantiles: list[float]
    tail: float
    beta: float
    frames: int

    @classmethod
    def fit(cls, scores: np.ndarray, *, tail: float = 0.9, n_levels: int = 64) -> TailCalibration:
        """Calibrate on the (N,) scores of normal calibration frames."""
        scores = np.asarray(scores, np.float64).ravel()
        if not len(scores):
            raise EmptyDatasetError("calibration got no scores: give normal calibration clips with readable frames")
        if not 0.5 <= tail < 1:
            raise ConfigError(f"tail must be in [0.5, 1), got {tail}")
        levels = np.linspace(0.0, tail, n_levels)
        q = np.quantile(scores, levels)
        excess = scores[scores > q[-1]] - q[-1]
        scale = max(abs(float(q[-1])), float(np.std(scores)), 1e-6)
        beta = max(float(excess.mean()) if len(excess) else 0.0, 1e-3 * scale)
        return cls(levels.tolist(), q.tolist(), float(tail), beta, int(len(scores)))

    def surprise(self, scores: np.ndarray) -> np.ndarray:
        """(N,) -log10 of :meth:`false_alarm_rate`: 0 = typical, 2 = 1 in 100 normal frames; in the exponential tail
        it grows linearly with the score, without a ceiling, so the most unusual frames stay ordered."""
        s = np.asarray(scores, np.float64)
        q = np.asarray(self.quantiles)
        q = q + 1e-12 * np.arange(len(q))  # ties (e.g. many frames at 0) still give an increasing table
        body = -np.log10(np.maximum(1.0 - np.interp(s, q, self.levels), 1.0 - self.tail))
        tail = -np.log10(1.0 - self.tail) + (s - q[-1]) / (self.beta * np.log(10.0))
        return np.where(s > q[-1], tail, body)

    def false_alarm_rate(self, scores: np.ndarray) -> np.ndarray:
        """(N,) share of normal calibration frames scoring at least as high as each score (extrapolated in the
        tail)."""
        return 10.0 ** -self.surprise(scores)

    def to_dict(self) -> dict:
        """JSON-able form (see :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TailCalibration:
        """Restore :meth:`to_dict`."""
        return cls(**d)
