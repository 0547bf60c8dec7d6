"""The reasoner interface: evidence -> :class:`~vlm_ad.reasoning.schema.Explanation`, plus chat answers.

A reasoner whose ``sees_images`` is true (an LLM reasoner created with ``images=True``, ``--vision``) is also given
the :class:`ImageViews` of the image: the pipeline builds them only for such reasoners.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np

from vlm_ad.evidence import Evidence
from vlm_ad.reasoning.schema import Explanation

__all__ = ["ImageViews", "Reasoner"]


@dataclass(frozen=True)
class ImageViews:
    """The pictures a vision-language model is shown next to the evidence text.

    Attributes:
        image: (H, W, 3) uint8, the inspected image.
        overlay: (H, W, 3) uint8, the anomaly map over the image with each region's box labelled R1, R2, ...
        exemplar: (h, w, 3) uint8, the nearest normal exemplar's patch (evidence id E1), or None.
    """

    image: np.ndarray = field(repr=False)
    overlay: np.ndarray | None = field(default=None, repr=False)
    exemplar: np.ndarray | None = field(default=None, repr=False)

    def named(self) -> list[tuple[str, np.ndarray]]:
        """``(name, pixels)`` of each view that exists, in the order the prompt describes them."""
        views = [("image", self.image), ("overlay", self.overlay), ("exemplar", self.exemplar)]
        return [(n, v) for n, v in views if v is not None]

    def data_urls(self) -> list[str]:
        """Each view as a ``data:image/png;base64,...`` URL (how OpenAI-compatible servers take images)."""
        from vlm_ad.viz import png_bytes

        return ["data:image/png;base64," + base64.b64encode(png_bytes(np.ascontiguousarray(v))).decode()
                for _, v in self.named()]


class Reasoner:
    """Base class of every registered reasoner (see ``create_reasoner``)."""

    name = "reasoner"
    #: whether :meth:`explain` and :meth:`answer` use the ``images`` they are given (the pipeline builds them only
    #: for reasoners that do)
    sees_images = False

    def explain(self, evidence: Evidence, images: ImageViews | None = None) -> Explanation:
        """A validated explanation of the evidence (``images``: the pictures, for reasoners that see them)."""
        raise NotImplementedError

    def answer(self, evidence: Evidence, question: str, history: list[tuple[str, str]] | None = None,
               images: ImageViews | None = None) -> str:
        """Answer a question about the image; ``history`` is the earlier (question, answer) pairs."""
        raise NotImplementedError
