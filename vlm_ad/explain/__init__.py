"""Explanations computed from a detector's internals (attention maps) rather than from its anomaly map."""

from vlm_ad.explain.gradcam import cam_from, grad_cam

__all__ = ["cam_from", "grad_cam"]
