"""Measuring defect naming: leave-image-out accuracy of a :class:`~vlm_ad.naming.DefectLibrary` with ``k`` labelled
examples per type.

For every labelled defect image (its whole ground-truth mask is the region), a library of ``shots_per_type``
examples per type is drawn from the *other* images (``repeats`` draws, seeded), and the region is named. Reported:
``type_accuracy`` (share of queries named right), ``balanced_accuracy`` (mean per-type recall), chance beside them
(``1 / types`` for a uniform guess, and the majority-type share), and the confusion matrix (rows = truth).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from vlm_ad.errors import DataError
from vlm_ad.naming import DeepRegionEncoder, DefectLibrary, region_descriptors

__all__ = ["LabelledRegions", "collect_regions", "evaluate_naming"]


@dataclass
class LabelledRegions:
    """Precomputed descriptors (and optional deep vectors) of labelled regions, one per image."""

    ids: list[str]
    labels: list[str]
    descriptors: list[dict[str, float]]
    deep: list[np.ndarray] | None


def collect_regions(samples: Sequence[Any], *, deep: bool = False, encoder: DeepRegionEncoder | None = None,
                    progress: Callable[[int], None] | None = None) -> LabelledRegions:
    """Describe the masked defect of every anomalous sample (``label == 1`` with a non-empty mask)."""
    ids, labels, descs, vecs = [], [], [], []
    enc = (encoder or DeepRegionEncoder()) if deep else None
    for s in samples:
        if s.label == 1 and s.mask is not None and s.mask.any():
            ids.append(s.image_id)
            labels.append(s.defect_type)
            descs.append(region_descriptors(s.image, s.mask))
            if enc is not None:
                vecs.append(enc(s.image, s.mask))
        if progress:
            progress(1)
    if len(set(labels)) < 2:
        raise DataError(f"naming needs masked defects of at least two types, found {sorted(set(labels))}")
    return LabelledRegions(ids, labels, descs, vecs if deep else None)


def evaluate_naming(regions: LabelledRegions, *, shots_per_type: int, features: str = "descriptors", k: int = 3,
                    repeats: int = 3, seed: int = 0, deep_weight: float = 1.0) -> dict[str, Any]:
    """Leave-image-out naming accuracy with ``shots_per_type`` library examples per type (see the module doc)."""
    types = sorted(set(regions.labels))
    by_type = {t: [i for i, lab in enumerate(regions.labels) if lab == t] for t in types}
    confusion = np.zeros((len(types), len(types)), int)
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        for q, truth in enumerate(regions.labels):
            lib = DefectLibrary(features=features, k=min(k, shots_per_type * len(types)), deep_weight=deep_weight)
            for t in types:
                pool = [i for i in by_type[t] if i != q]
                for i in rng.permutation(pool)[:shots_per_type].tolist():
                    lib.add_described(regions.descriptors[i], regions.deep[i] if regions.deep else None, t,
                                      regions.ids[i])
            deep = regions.deep[q] if regions.deep else None
            got = lib.name_described(regions.descriptors[q], deep).name
            confusion[types.index(truth), types.index(got)] += 1
    recall = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    counts = np.array([len(by_type[t]) for t in types])
    return {
        "shots_per_type": shots_per_type, "features": features, "k": k, "repeats": repeats, "seed": seed,
        "n_regions": len(regions.labels), "types": types,
        "type_accuracy": float(confusion.diagonal().sum() / confusion.sum()),
        "balanced_accuracy": float(recall.mean()),
        "per_type_recall": {t: float(r) for t, r in zip(types, recall)},
        "chance_uniform": 1.0 / len(types), "chance_majority": float(counts.max() / counts.sum()),
        "confusion": confusion.tolist(),
    }


def evaluate_naming_data(data: str, *, shots_per_type: int, features: str = "combined", seed: int = 0,
                         repeats: int = 3, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """:func:`evaluate_naming` on the masked defects of an MVTec-layout category folder (``vlm-ad eval --naming``)."""
    from vlm_ad.data import MVTecDataset

    test = MVTecDataset(data, "test")
    samples = (test[i] for i in range(len(test)) if test.labels[i] == 1)
    regions = collect_regions(samples, deep=features != "descriptors", progress=progress)
    return {"data": str(data), **evaluate_naming(regions, shots_per_type=shots_per_type, features=features,
                                                 repeats=repeats, seed=seed)}
