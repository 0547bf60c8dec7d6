"""Image-score thresholds owned by the detectors: :class:`ThresholdPolicy`."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlm_ad.errors import ConfigError, DataError, NotFittedError
from vlm_ad.evaluation.detection import check_labels_scores, check_scores, f1_threshold

__all__ = ["THRESHOLD_RULES", "ThresholdPolicy", "threshold_from_normal"]

#: rules that set a threshold from the scores of normal images only (e.g. PatchCore's leave-image-out scores)
THRESHOLD_RULES = ("mean+1sd", "q99")


def threshold_from_normal(scores: Any, rule: str = "mean+1sd") -> float:
    """A threshold from normal images' scores alone: ``"mean+1sd"`` (mean + one standard deviation) or ``"q99"``
    (the 0.99 quantile, nudged above ties). With 4-8 normal shots the 0.99 quantile is their maximum and flagged too
    few defects; mean + 1 sd was right more often across the dev suite (eval/results/thresholds.md).

    Raises:
        ConfigError: an unknown rule. DataError: empty or non-finite scores.
    """
    if rule not in THRESHOLD_RULES:
        raise ConfigError(f"threshold rule must be one of {THRESHOLD_RULES}, got {rule!r}")
    s = check_scores(scores, "scores")
    if rule == "q99" or len(s) < 2:
        return ThresholdPolicy(quantile=0.99).fit(s).threshold_
    return float(s.mean() + s.std(ddof=1))


class ThresholdPolicy:
    """Choose an image-score threshold on validation data (``score >= threshold_`` is anomalous).

    With labels that hold both classes, the threshold maximises F1 (see ``f1_max``). Otherwise it is
    the ``quantile`` of the normal scores (all scores when no labels are given); when that quantile
    equals the largest normal score (constant or tied top scores), it is moved slightly above that
    maximum so that tied normal images are not all flagged.

    Attributes:
        quantile: quantile of normal scores used without anomalous labels.
        threshold_: the fitted threshold (after ``fit``).
        method_: ``"f1"`` or ``"quantile"``, how ``threshold_`` was chosen (after ``fit``).
    """

    def __init__(self, quantile: float = 0.99) -> None:
        if not isinstance(quantile, (int, float, np.floating)) or not 0.0 < quantile <= 1.0:
            raise ConfigError(f"quantile must be a number in (0, 1], got {quantile!r}")
        self.quantile = float(quantile)

    def __repr__(self) -> str:
        fitted = f", threshold_={self.threshold_!r}" if hasattr(self, "threshold_") else ""
        return f"ThresholdPolicy(quantile={self.quantile!r}{fitted})"

    def fit(self, scores: Any, labels: Any = None) -> ThresholdPolicy:
        """Fit the threshold on validation scores (and optional 0/1 labels); return self.

        Raises:
            DataError: on empty or non-finite scores, bad labels, or labels that are all anomalous.
        """
        if labels is None:
            y, s = None, check_scores(scores, "scores")
        else:
            y, s = check_labels_scores(labels, scores)
        if y is not None and 0 < y.sum() < y.size:
            self.method_, self.threshold_ = "f1", f1_threshold(np.sort(s[~y]), s[y])[1]
            return self
        if y is not None and y.all():
            raise DataError("every validation label is anomalous; give normal scores or both classes")
        self.method_, self.threshold_ = "quantile", _safe_quantile(s if y is None else s[~y], self.quantile)
        return self

    def predict(self, scores: Any) -> np.ndarray:
        """Return a bool array, True where ``score >= threshold_``.

        Raises:
            NotFittedError: before ``fit``.
            DataError: on empty or non-finite scores.
        """
        if not hasattr(self, "threshold_"):
            raise NotFittedError("ThresholdPolicy is not fitted; call fit(scores, labels) first")
        return check_scores(scores, "scores") >= self.threshold_


def _safe_quantile(normal: np.ndarray, q: float) -> float:
    """The ``q`` quantile of ``normal``, nudged above the maximum when it would equal it."""
    t, top = float(np.quantile(normal, q)), float(normal.max())
    if t < top:
        return t
    return top + 1e-6 * max(1.0, abs(top), top - float(normal.min()))
