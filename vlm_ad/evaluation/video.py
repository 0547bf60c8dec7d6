"""Video metrics: frame AUROC (micro over all frames, macro over clips), pixel AUROC, event-region overlap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlm_ad.evaluation.detection import image_auroc, pixel_auroc
from vlm_ad.video.io import load_mask
from vlm_ad.video.model import ClipResult, VideoModel

__all__ = ["evaluate_results"]


def _frame_aurocs(results: list[ClipResult], labels: dict, key) -> tuple[float | None, float | None]:
    ys, ss, per_clip = [], [], []
    for r in results:
        lab = labels.get(r.clip, {})
        keep = [i for i, f in enumerate(r.frames) if int(f) in lab]
        y = [lab[int(r.frames[i])] for i in keep]
        s = key(r)[keep]
        ys += y
        ss += list(s)
        if 0 < sum(y) < len(y):
            per_clip.append(image_auroc(y, s))
    micro = image_auroc(ys, ss) if 0 < sum(ys) < len(ys) else None
    return micro, (float(np.mean(per_clip)) if per_clip else None)


def evaluate_results(model: VideoModel, results: list[ClipResult], labels: dict, root: Path | None, *,
                     pixel_scale: float = 0.5) -> dict:
    """Metrics of scored clips against frame labels ({clip: {frame: 0/1}}) and, under ``root``, masks
    ``ground_truth/<clip>/NNN_mask.png``. Per-cue frame AUROCs use each cue's calibrated surprise (smoothed
    like the fused score). Pixel AUROC is computed at ``pixel_scale`` of the frame size (memory)."""
    import cv2

    out: dict = {"frames": int(sum(len(r.frames) for r in results)), "clips": len(results)}
    out["frame_auroc_micro"], out["frame_auroc_macro"] = _frame_aurocs(results, labels, lambda r: r.smoothed)
    for name in model.cues:
        mi, ma = _frame_aurocs(results, labels, lambda r, n=name: r.normed[n])  # already smoothed and calibrated
        out[f"frame_auroc_micro/{name}"], out[f"frame_auroc_macro/{name}"] = mi, ma
    masks, maps, hit, total = [], [], 0, 0
    for r in results:
        for i, f in enumerate(r.frames):
            mask = load_mask(root, r.clip, int(f)) if root else None
            if mask is None:
                continue
            H, W = mask.shape
            size = (max(1, int(W * pixel_scale)), max(1, int(H * pixel_scale)))
            masks.append(cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0)
            maps.append(cv2.resize(r.maps[i], size, interpolation=cv2.INTER_LINEAR))
        for ev in r.events:
            for t in ev.track:
                mask = load_mask(root, r.clip, t["frame"]) if root else None
                if mask is None:
                    continue
                x0, y0, x1, y1 = t["box"]
                total += 1
                hit += bool(mask[y0:y1, x0:x1].any())
    out["pixel_auroc"] = pixel_auroc(masks, maps) if masks else None
    out["pixel_frames"] = len(masks)
    out["event_region_overlap"] = hit / total if total else None
    out["event_frames_with_masks"] = total
    out["events"] = int(sum(len(r.events) for r in results))
    return out
