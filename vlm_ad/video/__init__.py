"""Explainable video anomaly detection: frame folders and video files in, scored frames and explained events out.

Cue registry: ``create_cue(name, **kw)``, ``list_cues()`` (``appearance``, ``flow``, ``motion``, ``objects``).
``VideoModel(cues=[...]).fit(normal_clips)`` then ``score_clip(clip)`` -> :class:`ClipResult` with events. Scores are
calibrated surprises: -log10 of the share of normal calibration frames that score as high (2.0 = 1 in 100).
"""

from vlm_ad.video.calibration import TailCalibration
from vlm_ad.video.cues import CUES, Cue, CueStep, FrameContext, create_cue, list_cues
from vlm_ad.video.events import Event, explain_event
from vlm_ad.video.io import Frame, VideoClip, load_frame_labels, load_mask, open_clips
from vlm_ad.video.model import ClipResult, VideoModel, VideoModelConfig

__all__ = ["CUES", "ClipResult", "Cue", "CueStep", "Event", "Frame", "FrameContext", "TailCalibration", "VideoClip",
           "VideoModel", "VideoModelConfig", "create_cue", "explain_event", "list_cues", "load_frame_labels",
           "load_mask", "open_clips"]
