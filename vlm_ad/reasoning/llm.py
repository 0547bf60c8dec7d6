"""``ChatReasoner``: any langchain-core chat model turned into a reasoner, with validation, bounded repair/retry
and the grounding check. Prompts come from ``prompts/*.yaml`` (data, versioned)."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from vlm_ad._deps import require
from vlm_ad.errors import BackendUnavailableError, ConfigError, ExplanationError
from vlm_ad.evidence import Evidence
from vlm_ad.reasoning.base import Reasoner
from vlm_ad.reasoning.schema import Explanation, check_grounding, parse_explanation, reply_schema

__all__ = ["ChatReasoner", "load_prompt", "prompts_dir"]

ON_UNGROUNDED = ("reject", "flag")
PACKAGE_PROMPTS = Path(__file__).resolve().parents[1] / "prompts"


def prompts_dir() -> Path:
    """The prompt folder: ``$VLM_AD_PROMPTS``, else the ``prompts`` folder installed inside the package
    (``vlm_ad/prompts``, a link to the repository's top-level ``prompts/`` in a source checkout)."""
    env = os.environ.get("VLM_AD_PROMPTS")
    return Path(env) if env else PACKAGE_PROMPTS


@cache
def load_prompt(name: str) -> dict[str, Any]:
    """Read ``prompts/<name>.yaml`` (or ``.json``; a ``.txt`` file becomes ``{"system": text}``)."""
    for ext in ("yaml", "json", "txt"):
        path = prompts_dir() / f"{name}.{ext}"
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if ext == "txt":
                return {"system": text}
            if ext == "json":
                return json.loads(text)
            import yaml

            return yaml.safe_load(text)
    raise ConfigError(f"prompt {name!r} not found in {prompts_dir()} (looked for {name}.yaml/.json/.txt); "
                      "set VLM_AD_PROMPTS to the folder holding the prompt files")


class ChatReasoner(Reasoner):
    """A reasoner over a langchain-core ``BaseChatModel``.

    Args:
        chat_model: the chat model (llama.cpp, OpenAI-compatible server, transformers, or a scripted fake).
        name: the reasoner name recorded in explanations.
        max_retries: extra attempts after the first when the reply is invalid or ungrounded.
        on_ungrounded: ``"reject"`` (retry, then fail) or ``"flag"`` (accept and list the problems in ``flags``).
    """

    def __init__(self, chat_model: Any, *, name: str = "chat", max_retries: int = 2,
                 on_ungrounded: str = "reject") -> None:
        if on_ungrounded not in ON_UNGROUNDED:
            raise ConfigError(f"on_ungrounded must be one of {ON_UNGROUNDED}, got {on_ungrounded!r}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        require("langchain_core", "LLM reasoners")
        self.chat_model, self.name = chat_model, name
        self.max_retries, self.on_ungrounded = max_retries, on_ungrounded

    def _invoke(self, messages: list, **kwargs: Any) -> str:
        try:
            reply = self.chat_model.invoke(messages, **kwargs)
        except BackendUnavailableError:
            raise
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise BackendUnavailableError(f"the {self.name} model failed: {exc}; check that the model or server is "
                                          "available, or pass --fallback grounded") from exc
        return reply.content if isinstance(reply.content, str) else json.dumps(reply.content)

    def explain(self, evidence: Evidence) -> Explanation:
        """Ask the model; repair, validate and check grounding; retry with the problems up to ``max_retries``.

        ``evidence`` is an image's :class:`Evidence` or any object with the same members (``ids``, ``regions``,
        ``numbers()``, ``to_json()``), e.g. a video event's :class:`~vlm_ad.video.evidence.EventEvidence`; its
        ``prompt`` attribute names the prompt file (default ``explain``).
        """
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        p = load_prompt(getattr(evidence, "prompt", "explain"))
        messages = [SystemMessage(p["system"]),
                    HumanMessage(p["human"].format(evidence=json.dumps(evidence.to_json()), example=p["example"]))]
        raw, problems = "", []
        for _ in range(1 + self.max_retries):
            # backends that decode under a grammar (llama.cpp) take the schema; the others ignore it
            raw = self._invoke(messages, json_schema=reply_schema(evidence))
            try:
                expl = parse_explanation(raw)
            except ValueError as exc:
                problems = [str(exc)]
            else:
                problems = check_grounding(expl, evidence)
                if not problems or self.on_ungrounded == "flag":
                    return expl.model_copy(update={"reasoner": self.name, "flags": expl.flags + problems})
            messages += [AIMessage(raw), HumanMessage(p["retry"].format(problems="; ".join(problems[:6])))]
        raise ExplanationError(
            f"the {self.name} reasoner gave no valid, grounded explanation after {1 + self.max_retries} attempts "
            f"({'; '.join(problems[:3])}); the raw reply is kept in the error's .raw. Try a stronger model, "
            "on_ungrounded='flag', or --reasoner grounded", raw=raw, problems=problems)

    def answer(self, evidence: Evidence, question: str, history: list[tuple[str, str]] | None = None) -> str:
        """One chat turn grounded in the evidence; ungrounded numbers or ids are flagged under the answer."""
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        from vlm_ad.reasoning.grounded import GroundedReasoner
        from vlm_ad.reasoning.schema import Step

        expl = GroundedReasoner().explain(evidence)
        system = load_prompt("chat")["system"].format(evidence=json.dumps(evidence.to_json()),
                                                      explanation=expl.model_dump_json())
        messages: list = [SystemMessage(system)]
        for q, a in history or []:
            messages += [HumanMessage(q), AIMessage(a)]
        text = self._invoke(messages + [HumanMessage(question)]).strip()
        probe = expl.model_copy(update={"steps": [Step(text=text or "-")], "summary": "-", "cited_regions": []})
        problems = check_grounding(probe, evidence)
        return text + ("\n[unverified: " + "; ".join(problems) + "]" if problems else "")
