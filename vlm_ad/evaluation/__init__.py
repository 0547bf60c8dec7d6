"""Evaluation in one place: detection and localisation metrics (``detection``), explanation scores
(``explanations``), defect-naming accuracy (``naming``), video metrics (``video``) and whole runs (``run``: fit on k
shots, predict a test split, metrics and costs). Not to be confused with the top-level ``eval/`` benchmark scripts.

::

    from vlm_ad.evaluation import evaluate
    evaluate(labels, scores, masks=masks, maps=maps)   # image/pixel AUROC, AP, F1-max, AUPRO, IoU, pointing game
"""

from vlm_ad.evaluation.detection import (
    aupro,
    evaluate,
    f1_max,
    image_ap,
    image_auroc,
    iou_at,
    pixel_ap,
    pixel_auroc,
    pointing_game,
)

__all__ = ["aupro", "evaluate", "f1_max", "image_ap", "image_auroc", "iou_at", "pixel_ap", "pixel_auroc",
           "pointing_game"]
