"""``ChatSession``: a multi-turn conversation about one explained image (``vlm-ad chat``).

::

    from vlm_ad.chat import ChatSession
    from vlm_ad.pipeline import Pipeline

    pipe = Pipeline(load_detector("models/tile"))
    session = ChatSession(pipe.run("part.png"), pipe.reasoner)
    session.ask("where is the defect and how sure are you?")
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.pipeline import Explained
from vlm_ad.reasoning import Reasoner

__all__ = ["ChatSession"]


class ChatSession:
    """A multi-turn conversation about one explained image.

    Args:
        explained: the image's map, evidence and explanation (``Pipeline.run``).
        reasoner: answers the questions (grounded or an LLM).
    """

    def __init__(self, explained: Explained, reasoner: Reasoner) -> None:
        self.explained, self.reasoner = explained, reasoner
        self.history: list[tuple[str, str]] = []

    def ask(self, question: str) -> str:
        """Answer ``question`` with the earlier turns as context; the turn is added to ``history``."""
        ex = self.explained
        if ex.views is not None and getattr(self.reasoner, "sees_images", False):
            answer = self.reasoner.answer(ex.evidence, question, self.history, ex.views)
        else:
            answer = self.reasoner.answer(ex.evidence, question, self.history)
        self.history.append((question, answer))
        return answer

    def save(self, out_dir: str | Path, stem: str = "chat") -> list[Path]:
        """Write ``<stem>_transcript.json``, ``<stem>_transcript.md`` and ``<stem>_overlay.png`` (atomically)."""
        from vlm_ad.viz import png_bytes

        out = Path(out_dir)
        ex = self.explained
        record = {"image_id": ex.evidence.image_id, "evidence": ex.evidence.to_json(),
                  "explanation": ex.explanation.model_dump(), "turns": [{"q": q, "a": a} for q, a in self.history]}
        md = [f"# Chat about {ex.evidence.image_id}", "", f"**Explanation:** {ex.explanation.summary}", ""]
        md += [f"- flag: {f}" for f in ex.explanation.flags] + ([""] if ex.explanation.flags else [])
        md += [line for q, a in self.history for line in (f"**Q:** {q}", "", f"**A:** {a}", "")]
        paths = [out / f"{stem}_transcript.json", out / f"{stem}_transcript.md", out / f"{stem}_overlay.png"]
        atomic_write_bytes(paths[0], json.dumps(record, indent=2).encode())
        atomic_write_bytes(paths[1], "\n".join(md).encode())
        atomic_write_bytes(paths[2], png_bytes(ex.overlay()))
        return paths
