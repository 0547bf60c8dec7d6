"""The reasoner interface: evidence -> :class:`~vlm_ad.reasoning.schema.Explanation`, plus chat answers."""

from __future__ import annotations

from vlm_ad.evidence import Evidence
from vlm_ad.reasoning.schema import Explanation

__all__ = ["Reasoner"]


class Reasoner:
    """Base class of every registered reasoner (see ``create_reasoner``)."""

    name = "reasoner"

    def explain(self, evidence: Evidence) -> Explanation:
        """A validated explanation of the evidence."""
        raise NotImplementedError

    def answer(self, evidence: Evidence, question: str, history: list[tuple[str, str]] | None = None) -> str:
        """Answer a question about the image; ``history`` is the earlier (question, answer) pairs."""
        raise NotImplementedError
