"""``ChatReasoner``: any langchain-core chat model turned into a reasoner, with validation, bounded repair/retry
and the grounding check. Prompts come from ``prompts/*.yaml`` (data, versioned)."""

from __future__ import annotations

import json
import os
import threading
from functools import cache
from pathlib import Path
from typing import Any

from vlm_ad._deps import require
from vlm_ad.errors import BackendUnavailableError, ConfigError, ExplanationError, ReasonerError
from vlm_ad.evidence import Evidence
from vlm_ad.reasoning.base import ImageViews, Reasoner
from vlm_ad.reasoning.schema import Explanation, check_grounding, parse_explanation, reply_schema
from vlm_ad.reasoning.verify import verify_claims

__all__ = ["ChatReasoner", "load_prompt", "prompts_dir"]

ON_UNGROUNDED = ("reject", "flag")
DEFAULT_DEADLINE_S = 180.0  # one model call, in all; generous for a 1.5B model on 2 CPU cores (11-17 tok/s)
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

    The model only words the evidence: its reply is validated, its ids and numbers are checked against the
    evidence (:func:`~vlm_ad.reasoning.schema.check_grounding`), and a verdict or location that contradicts the
    measurement is overruled and flagged (:func:`~vlm_ad.reasoning.verify.verify_claims`). The evidence, file names
    included, reaches the model only as quoted data inside ``<evidence>`` tags.

    Args:
        chat_model: the chat model (llama.cpp, OpenAI-compatible server, transformers, or a scripted fake).
        name: the reasoner name recorded in explanations.
        max_retries: extra attempts after the first when the reply is invalid or ungrounded.
        on_ungrounded: ``"reject"`` (retry, then fail) or ``"flag"`` (accept and list the problems in ``flags``).
        images: the model accepts images: send the image, the overlay with numbered region boxes and the nearest
            normal exemplar patch as image parts next to the evidence text (``--vision``).
        deadline_s: the most seconds one model call may take in all (not per read: a server that trickles bytes
            is cut off too); None waits as long as the backend does.
    """

    def __init__(self, chat_model: Any, *, name: str = "chat", max_retries: int = 2, on_ungrounded: str = "reject",
                 images: bool = False, deadline_s: float | None = DEFAULT_DEADLINE_S) -> None:
        if on_ungrounded not in ON_UNGROUNDED:
            raise ConfigError(f"on_ungrounded must be one of {ON_UNGROUNDED}, got {on_ungrounded!r}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        if deadline_s is not None and deadline_s <= 0:
            raise ConfigError(f"deadline_s must be > 0 seconds (or None for no deadline), got {deadline_s}")
        require("langchain_core", "LLM reasoners")
        self.chat_model, self.name = chat_model, name
        self.max_retries, self.on_ungrounded = max_retries, on_ungrounded
        self.images, self.deadline_s = bool(images), deadline_s

    @property
    def sees_images(self) -> bool:
        return self.images

    def _invoke(self, messages: list, **kwargs: Any) -> str:
        """One model call under the overall deadline; every backend failure becomes a :class:`ReasonerError`."""
        try:
            reply = _within(self.deadline_s, lambda: self.chat_model.invoke(messages, **kwargs),
                            on_timeout=getattr(self.chat_model, "abort", None))
        except ReasonerError:
            raise
        except _DeadlineExceeded as exc:
            raise BackendUnavailableError(
                f"the {self.name} model gave no complete reply within the deadline of {self.deadline_s:g} s; use a "
                "faster model or server, raise deadline_s, or pass --fallback grounded") from exc
        except Exception as exc:  # any failure inside a third-party backend is a backend failure
            raise BackendUnavailableError(f"the {self.name} model failed ({type(exc).__name__}: {exc}); check that "
                                          "the model or server is available, or pass --fallback grounded") from exc
        return reply.content if isinstance(reply.content, str) else json.dumps(reply.content)

    def _human(self, text: str, images: ImageViews | None, vision: str | None) -> Any:
        """The user message: text only, or (``images=True`` and views given) the views as image parts + text."""
        from langchain_core.messages import HumanMessage

        if not (self.images and images is not None):
            return HumanMessage(text)
        parts: list[dict] = [{"type": "text", "text": vision}] if vision else []
        parts += [{"type": "image_url", "image_url": {"url": url}} for url in images.data_urls()]
        return HumanMessage(parts + [{"type": "text", "text": text}])

    def explain(self, evidence: Evidence, images: ImageViews | None = None) -> Explanation:
        """Ask the model; repair, validate and check grounding; retry with the problems up to ``max_retries``; then
        let the measurement overrule a contradicting verdict or location (flagged).

        ``evidence`` is an image's :class:`Evidence` or any object with the same members (``ids``, ``regions``,
        ``numbers()``, ``to_json()``), e.g. a video event's :class:`~vlm_ad.video.evidence.EventEvidence`; its
        ``prompt`` attribute names the prompt file (default ``explain``). ``images`` go to the model as image parts
        when the reasoner was created with ``images=True``.
        """
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        p = load_prompt(getattr(evidence, "prompt", "explain"))
        human = p["human"].format(evidence=json.dumps(evidence.to_json()), example=p["example"])
        messages = [SystemMessage(p["system"]), self._human(human, images, p.get("vision"))]
        raw, problems = "", []
        for _ in range(1 + self.max_retries):
            # the reply's schema: llama.cpp decodes under its grammar, OpenAI-compatible servers get it as
            # response_format, the others ignore it
            raw = self._invoke(messages, json_schema=reply_schema(evidence))
            try:
                expl = parse_explanation(raw)
            except ValueError as exc:
                problems = [str(exc)]
            else:
                problems = check_grounding(expl, evidence)
                if not problems or self.on_ungrounded == "flag":
                    expl = expl.model_copy(update={"reasoner": self.name, "flags": expl.flags + problems})
                    return verify_claims(expl, evidence)
            messages += [AIMessage(raw), HumanMessage(p["retry"].format(problems="; ".join(problems[:6])))]
        raise ExplanationError(
            f"the {self.name} reasoner gave no valid, grounded explanation after {1 + self.max_retries} attempts "
            f"({'; '.join(problems[:3])}); the raw reply is kept in the error's .raw. Try a stronger model, "
            "on_ungrounded='flag', or --reasoner grounded", raw=raw, problems=problems)

    def answer(self, evidence: Evidence, question: str, history: list[tuple[str, str]] | None = None,
               images: ImageViews | None = None) -> str:
        """One chat turn grounded in the evidence; ungrounded numbers or ids are flagged under the answer.

        The evidence and the grounded explanation open the conversation as quoted data, with the first question.
        """
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        from vlm_ad.reasoning.grounded import GroundedReasoner
        from vlm_ad.reasoning.schema import Step

        expl = GroundedReasoner().explain(evidence)
        p = load_prompt("chat")
        context = p["context"].format(evidence=json.dumps(evidence.to_json()), explanation=expl.model_dump_json())
        turns = [*(history or []), (question, None)]
        messages: list = [SystemMessage(p["system"]),
                          self._human(f"{context}\nQuestion: {turns[0][0]}", images, load_prompt("explain")["vision"])]
        messages += [AIMessage(turns[0][1])] if turns[0][1] is not None else []
        for q, a in turns[1:]:
            messages += [HumanMessage(q)] + ([AIMessage(a)] if a is not None else [])
        text = self._invoke(messages).strip()
        probe = expl.model_copy(update={"steps": [Step(text=text or "-")], "summary": "-", "cited_regions": []})
        problems = check_grounding(probe, evidence)
        return text + ("\n[unverified: " + "; ".join(problems) + "]" if problems else "")


class _DeadlineExceeded(Exception):
    """A model call that did not finish within the reasoner's overall deadline."""


def _within(seconds: float | None, call: Any, *, on_timeout: Any = None) -> Any:
    """``call()`` in a worker thread, waited for at most ``seconds`` in all; raises :class:`_DeadlineExceeded`.

    The worker is a daemon thread: a call that never returns is abandoned (``on_timeout``, e.g. closing the HTTP
    client, lets it end sooner) and cannot keep the process alive.
    """
    if seconds is None:
        return call()
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="vlm-ad-llm-call", daemon=True).start()
    if not done.wait(seconds):
        if on_timeout is not None:
            on_timeout()
        raise _DeadlineExceeded(f"no reply within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]
