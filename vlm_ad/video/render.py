"""Annotated GIFs (Pillow): frame, fused anomaly map, event boxes and captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlm_ad.video.io import VideoClip
from vlm_ad.video.model import ClipResult, VideoModel

__all__ = ["write_gif"]


def _overlay(rgb: np.ndarray, heat: np.ndarray) -> Image.Image:
    h = np.clip(heat / 2.0, 0, 1)[..., None]  # 2.0 = twice the normal 99th percentile is full red
    red = np.zeros_like(rgb, dtype=np.float32)
    red[..., 0] = 255
    return Image.fromarray((rgb * (1 - 0.6 * h) + red * 0.6 * h).astype(np.uint8))


def write_gif(model: VideoModel, res: ClipResult, clip: VideoClip, path: Path, *, stride: int = 1,
              fps: float = 10.0) -> Path:
    """Write ``path``: every ``stride``-th frame with the map, the event region box and a caption."""
    from vlm_ad._cache import atomic_write_bytes

    pos = {int(f): i for i, f in enumerate(res.frames)}
    boxes = {t["frame"]: (e, t["box"]) for e in res.events for t in e.track}
    images = []
    for frame in clip.frames(stride=stride):
        i = pos.get(frame.index)
        if i is None:
            continue
        im = _overlay(frame.image.astype(np.float32), model.full_map(res, i))
        draw = ImageDraw.Draw(im)
        text = f"{res.clip} #{frame.index} score {res.smoothed[i]:.2f} / thr {model.threshold_:.2f}"
        if frame.index in boxes:
            ev, box = boxes[frame.index]
            draw.rectangle(box, outline=(255, 255, 0), width=2)
            text += f"  EVENT {ev.start}-{ev.end}"
        draw.rectangle([0, 0, im.width, 12], fill=(0, 0, 0))
        draw.text((2, 1), text, fill=(255, 255, 255))
        images.append(im.convert("P", palette=Image.ADAPTIVE))
    if images:
        import io

        buf = io.BytesIO()
        images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        atomic_write_bytes(path, buf.getvalue())
    return path
