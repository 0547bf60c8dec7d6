"""How ``adapted`` with ``fuse="auto"`` chooses its retrieval weight, and how sure it is.

The validation set is small (the fit images, leave-image-out, plus at most 16 synthetic-anomaly copies), so an AUROC
gain of a few hundredths can come from one or two images. :func:`fuse_table` therefore keeps every validation image's
scores and runs a *paired bootstrap over images*: each of :data:`FUSE_RESAMPLES` resamples draws the normal images
and the synthetic ones with replacement (each class apart, so every resample holds both; an image brings all its
patches, because patches of one image are not independent), and scores every candidate weight on that same resample.
A weight's ``confidence`` is the share of resamples in which its mean of image and patch AUROC beats retrieval
alone's (weight 1.0); ties do not count as beating. :func:`pick_fuse` keeps a head weight only with confidence of at
least :data:`FUSE_CONFIDENCE`, an observed gain above :data:`FUSE_MARGIN`, and no observed loss on either AUROC;
else it falls back to retrieval alone. The resampling seed is fixed, so a fit is deterministic.

AUROCs under resampling are computed exactly from per-image pair counts: with ``U[a, b]`` the Mann-Whitney count of
image ``a``'s positive patches over image ``b``'s negative ones (ties count one half), an image drawn ``c_a`` times
gives ``AUROC = c U c / ((c . P) (c . N))`` - the same number as scikit-learn's ``roc_auc_score`` with those counts as
sample weights, for thousands of resamples in one matrix product.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

FUSE_MARGIN = 0.01  # the head must beat retrieval alone by more than this (mean of image and patch AUROC)
FUSE_CONFIDENCE = 0.95  # ... and beat it in at least this share of bootstrap resamples of the validation images
FUSE_RESAMPLES = 1000


def pair_counts(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image Mann-Whitney counts for grouped AUROC.

    Args:
        scores: one 1-D array of scores per image (its patches, or one image score).
        labels: matching boolean arrays, True = anomalous.

    Returns:
        ``U`` (n, n): ``U[a, b]`` = pairs (positive of ``a``, negative of ``b``) where the positive scores higher, ties
        one half; ``P`` (n,) positives and ``N`` (n,) negatives per image.
    """
    scores = [np.asarray(s, np.float64).reshape(-1) for s in scores]
    labels = [np.asarray(y, bool).reshape(-1) for y in labels]
    n = len(scores)
    pos = np.concatenate([s[y] for s, y in zip(scores, labels)])
    owner = np.concatenate([np.full(int(y.sum()), i) for i, y in enumerate(labels)]).astype(int)
    u = np.zeros((n, n))
    for b, (s, y) in enumerate(zip(scores, labels)):
        neg = np.sort(s[~y])
        if len(neg) and len(pos):
            lo, hi = np.searchsorted(neg, pos, "left"), np.searchsorted(neg, pos, "right")
            u[:, b] = np.bincount(owner, weights=lo + 0.5 * (hi - lo), minlength=n)
    return u, np.array([y.sum() for y in labels], float), np.array([(~y).sum() for y in labels], float)


def grouped_auroc(counts: np.ndarray, u: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``counts`` (R, images): how often each image is drawn. NaN where a class is absent."""
    counts = np.atleast_2d(np.asarray(counts, float))
    den = (counts @ p) * (counts @ n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("ri,ij,rj->r", counts, u, counts) / den


def resample_counts(image_labels: np.ndarray, *, seed: int, resamples: int = FUSE_RESAMPLES) -> np.ndarray:
    """(resamples + 1, n) draw counts of the n validation images: row 0 the set itself (all ones), then the paired
    bootstrap resamples, normal and anomalous images drawn apart (with replacement) so that both are always present."""
    y = np.asarray(image_labels, bool)
    rng = np.random.default_rng([seed, 4241])
    counts = np.zeros((resamples + 1, len(y)))
    counts[0] = 1  # row 0: the validation set itself
    for cls in (np.flatnonzero(~y), np.flatnonzero(y)):  # each class resampled apart: both always present
        counts[1:, cls] = rng.multinomial(len(cls), np.full(len(cls), 1 / len(cls)), size=resamples)
    return counts


def fuse_table(image_scores: Mapping[float, np.ndarray], patch_scores: Mapping[float, Sequence[np.ndarray]],
               image_labels: np.ndarray, patch_labels: Sequence[np.ndarray], *, seed: int,
               resamples: int = FUSE_RESAMPLES) -> dict[str, dict[str, float]]:
    """Validation figures per retrieval weight, with a paired bootstrap against retrieval alone.

    Args:
        image_scores: ``{weight: (n,) image scores}`` for the n validation images; must hold weight 1.0.
        patch_scores: ``{weight: n arrays of that image's patch scores}``.
        image_labels: (n,) True for a synthetic-anomaly image.
        patch_labels: n boolean arrays, True for an anomalous patch (all False on a normal image).
        seed: resampling seed (fixed: the same inputs give the same table).
        resamples: bootstrap resamples.

    Returns:
        ``{str(weight): {"image_auroc", "patch_auroc", "mean"}}``; head weights (below 1) add ``"confidence"`` (share of
        resamples whose mean beats retrieval alone's) and ``"gain_ci90"`` (5th and 95th percentile of the gain in mean).
    """
    y = np.asarray(image_labels, bool)
    counts = resample_counts(y, seed=seed, resamples=resamples)
    img_labels = [np.array([v]) for v in y]
    means, table = {}, {}
    for w in sorted(image_scores):
        img = grouped_auroc(counts, *pair_counts([np.array([s]) for s in image_scores[w]], img_labels))
        pix = grouped_auroc(counts, *pair_counts(patch_scores[w], patch_labels))
        means[w] = (img + pix) / 2
        table[str(float(w))] = {"image_auroc": round(float(img[0]), 4), "patch_auroc": round(float(pix[0]), 4),
                                "mean": round(float(means[w][0]), 4)}
    for w in means:
        if w < 1:
            gain = (means[w] - means[1.0])[1:]
            gain = gain[np.isfinite(gain)]
            table[str(float(w))] |= {"confidence": round(float(np.mean(gain > 0)), 3) if len(gain) else 0.0,
                                     "gain_ci90": [round(float(q), 4) for q in np.quantile(gain, [0.05, 0.95])]
                                     if len(gain) else None}
    return table


def pick_fuse(table: Mapping[str, Mapping[str, float]], *, margin: float = FUSE_MARGIN,
              confidence: float = FUSE_CONFIDENCE) -> tuple[float, str, float, float | None]:
    """The retrieval weight to use from :func:`fuse_table` figures (must hold ``"1.0"``, retrieval alone).

    A head weight (below 1) is eligible when it loses to retrieval alone on neither AUROC by more than half the
    ``margin``, its mean beats retrieval alone's by more than ``margin``, and its bootstrap ``confidence`` (a missing
    one counts as 0) is at least ``confidence``; the eligible one with the best mean is kept, else 1.0.

    Returns:
        (weight, reason, gain in mean of the kept or best head weight, that weight's confidence or None).
    """
    ref = table["1.0"]
    heads = [w for w in table if float(w) < 1]
    if not heads:
        return 1.0, "no head weight to try", 0.0, None
    safe = [w for w in heads if all(table[w].get(k, 1.0) >= ref.get(k, 0.0) - margin / 2
                                    for k in ("image_auroc", "patch_auroc"))]
    gain = {w: round(float(table[w]["mean"] - ref["mean"]), 4) for w in heads}
    conf = {w: table[w].get("confidence", 0.0) for w in heads}
    sure = [w for w in safe if gain[w] > margin and conf[w] >= confidence]
    if sure:
        best = max(sure, key=lambda w: (table[w]["mean"], float(w)))  # ties: more retrieval
        return float(best), f"head helps (beat retrieval alone in {conf[best]:.0%} of resamples)", gain[best], \
            conf[best]
    best = max(safe or heads, key=lambda w: (table[w]["mean"], float(w)))
    if best in safe and gain[best] > margin:
        return 1.0, (f"head gain not sure (fuse {float(best):g} beat retrieval alone in only {conf[best]:.0%} of "
                     f"resamples; {confidence:.0%} needed)"), gain[best], conf[best]
    return 1.0, "head does not help", gain[best], conf.get(best)


def score_table(image_scores: Mapping[str, Sequence[float]], image_labels: np.ndarray, *, base: str, seed: int,
                resamples: int = FUSE_RESAMPLES) -> dict[str, dict[str, float]]:
    """Validation image AUROC per image-score rule, with the paired bootstrap of :func:`fuse_table` against ``base``.

    Args:
        image_scores: ``{rule name: (n,) image scores}`` of the same n validation images; must hold ``base``.
        image_labels: (n,) True for a synthetic-anomaly image.
        base: the rule the others must beat.
        seed: resampling seed (the same resamples as :func:`fuse_table` with that seed).
        resamples: bootstrap resamples.

    Returns:
        ``{name: {"image_auroc"}}``; rules other than ``base`` add ``"confidence"`` (share of resamples in which
        their image AUROC beats the base's; ties do not count), ``"loses"`` (share in which it is below the base's)
        and ``"gain_ci90"`` (5th and 95th percentile of the gain).
    """
    y = np.asarray(image_labels, bool)
    counts = resample_counts(y, seed=seed, resamples=resamples)
    labels = [np.array([v]) for v in y]
    auc = {k: grouped_auroc(counts, *pair_counts([np.array([s]) for s in v], labels)) for k, v in image_scores.items()}
    table = {k: {"image_auroc": round(float(a[0]), 4)} for k, a in auc.items()}
    for k, a in auc.items():
        if k != base:
            gain = (a - auc[base])[1:]
            gain = gain[np.isfinite(gain)]
            table[k] |= {"confidence": round(float(np.mean(gain > 0)), 3) if len(gain) else 0.0,
                         "loses": round(float(np.mean(gain < 0)), 3) if len(gain) else 0.0,
                         "gain_ci90": [round(float(q), 4) for q in np.quantile(gain, [0.05, 0.95])]
                         if len(gain) else None}
    return table


SCORE_BASE = "max"  # the retrieval PatchCore's image score: what the adapted detector must not lose to
SCORE_CONFIDENCE = 0.95  # the top-k score is kept when it beats the base in at least this share of resamples
SCORE_TIE = "max"  # what an exact tie on the validation image AUROC keeps


def pick_score(table: Mapping[str, Mapping[str, float]], *, base: str = SCORE_BASE, challenger: str = "topk",
               confidence: float = SCORE_CONFIDENCE, tie: str = SCORE_TIE) -> tuple[str, str]:
    """The image-score rule to use from :func:`score_table` figures: ``challenger`` when its validation image AUROC
    is above ``base``'s and it beat it in at least ``confidence`` of the resamples; on an exact tie ``tie``; else
    ``base``. Returns (rule, reason)."""
    b, c = table[base]["image_auroc"], table[challenger]["image_auroc"]
    conf = table[challenger].get("confidence", 0.0)
    if c > b and conf >= confidence:
        return challenger, f"{challenger} beat {base} ({c:.3f} vs {b:.3f}; in {conf:.0%} of resamples)"
    if c > b:
        return base, (f"{challenger} gain not sure ({c:.3f} vs {b:.3f}; beat {base} in only {conf:.0%} of resamples, "
                      f"{confidence:.0%} needed)")
    if c == b:
        return tie, f"tie ({c:.3f}): {tie} kept"
    return base, f"{challenger} loses ({c:.3f} vs {b:.3f})"
