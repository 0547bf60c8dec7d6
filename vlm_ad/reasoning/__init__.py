"""Reasoners: evidence -> validated :class:`Explanation` (and chat answers). One registry, one factory.

Registered names:
    grounded   deterministic chain of thought over the evidence, no model (the default)
    llamacpp   a local GGUF model through llama-cpp-python (``llm="smollm2"`` or a path)
    openai     any OpenAI-compatible server (``base_url``, ``model``, ``api_key`` or $VLM_AD_OPENAI_*), openai SDK
    hf         a local transformers folder (``model_dir``): a vision-language model or a causal LM

LLM reasoners also take ``images=True`` (the model accepts images: it is shown the image, the overlay with numbered
region boxes and the nearest normal exemplar patch) and ``deadline_s`` (the most seconds one model call may take).
    chat       any langchain-core chat model instance (``chat_model=``), e.g. a scripted fake in tests

``create_reasoner(name, fallback="grounded")`` answers with ``grounded`` (and says why in ``flags``) whenever the
model fails: it cannot be loaded, the server cannot be reached or refuses the request (images, context length),
the reply stays invalid or ungrounded, or a call passes its deadline. Without ``fallback`` those raise.
"""

from __future__ import annotations

from typing import Any

from vlm_ad.errors import (
    BackendUnavailableError,
    ConfigError,
    MissingDependencyError,
    ReasonerError,
    WeightsNotFoundError,
)
from vlm_ad.evidence import Evidence
from vlm_ad.reasoning.base import ImageViews, Reasoner
from vlm_ad.reasoning.grounded import GroundedReasoner
from vlm_ad.reasoning.schema import Explanation, Step, check_grounding, parse_explanation, repair_json
from vlm_ad.registry import Registry

__all__ = [
    "REASONERS",
    "Explanation",
    "FallbackReasoner",
    "GroundedReasoner",
    "ImageViews",
    "Reasoner",
    "Step",
    "check_grounding",
    "create_reasoner",
    "list_reasoners",
    "parse_explanation",
    "repair_json",
]

REASONERS: Registry[Reasoner] = Registry("reasoner")
_LLM_KW = ("max_retries", "on_ungrounded", "images", "deadline_s")


def _split(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: kw.pop(k) for k in _LLM_KW if k in kw}


@REASONERS.register("grounded", description="deterministic chain of thought over the evidence (no model)")
def _grounded() -> Reasoner:
    return GroundedReasoner()


@REASONERS.register("chat", description="any langchain-core chat model instance (chat_model=..., label=...)")
def _chat(*, chat_model: Any, label: str = "chat", **kw: Any) -> Reasoner:
    from vlm_ad.reasoning.llm import ChatReasoner

    return ChatReasoner(chat_model, name=label, **kw)


@REASONERS.register("llamacpp", description="local GGUF model via llama-cpp-python (llm='smollm2' or a path)")
def _llamacpp(*, llm: str = "smollm2", **kw: Any) -> Reasoner:
    from vlm_ad.reasoning.backends import LlamaCppChat, resolve_gguf
    from vlm_ad.reasoning.llm import ChatReasoner

    opts = _split(kw)
    if opts.get("images"):
        raise ConfigError("the llamacpp reasoner sends text only (images need a multimodal projector it does not "
                          "load); drop --vision, or use --reasoner openai with a vision server or --reasoner hf with a "
                          "vision-language model folder")
    return ChatReasoner(LlamaCppChat(model_path=str(resolve_gguf(llm)), **kw), name="llamacpp", **opts)


@REASONERS.register("openai", description="OpenAI-compatible server (base_url, model, api_key or $VLM_AD_OPENAI_*)")
def _openai(**kw: Any) -> Reasoner:
    from vlm_ad.reasoning.backends import OpenAICompatChat
    from vlm_ad.reasoning.llm import DEFAULT_DEADLINE_S, ChatReasoner

    opts = _split(kw)
    kw = {k: v for k, v in kw.items() if v is not None}
    # a non-streamed reply arrives in one read: waiting less than the deadline per request would cut off (and
    # re-send) a slow local server's generation
    kw.setdefault("timeout", opts.get("deadline_s", DEFAULT_DEADLINE_S) or DEFAULT_DEADLINE_S)
    return ChatReasoner(OpenAICompatChat(**kw), name="openai", **opts)


@REASONERS.register("hf", description="local transformers folder: vision-language model or causal LM (model_dir=...)")
def _hf(*, model_dir: str | None = None, **kw: Any) -> Reasoner:
    from vlm_ad.reasoning.backends import HFChat
    from vlm_ad.reasoning.llm import DEFAULT_DEADLINE_S, ChatReasoner

    if model_dir is None:
        raise ConfigError("the hf reasoner needs model_dir (--model-dir DIR: a local transformers folder holding a "
                          "vision-language model or a causal LM)")
    opts = _split(kw)
    kw.setdefault("max_time", opts.get("deadline_s", DEFAULT_DEADLINE_S))  # generation stops itself at the deadline
    chat = HFChat(model_dir=str(model_dir), **kw)
    if opts.get("images") and not chat.vision:
        raise ConfigError(f"{model_dir} holds a text-only causal LM, which cannot take images; drop --vision, or "
                          "pass a vision-language model folder (its config.json has a vision_config)")
    return ChatReasoner(chat, name="hf", **opts)


class FallbackReasoner(Reasoner):
    """Use ``primary``; when it fails in any way a reasoner can (server unreachable or refusing, a reply that stays
    invalid or ungrounded, a context too long, a call past its deadline), answer with ``fallback`` and say why in
    ``flags`` (or in front of a chat answer)."""

    def __init__(self, primary: Reasoner, fallback: Reasoner) -> None:
        self.primary, self.fallback = primary, fallback
        self.name = primary.name

    @property
    def sees_images(self) -> bool:
        return self.primary.sees_images

    def explain(self, evidence: Evidence, images: ImageViews | None = None) -> Explanation:
        try:
            return self.primary.explain(evidence, images) if images is not None else self.primary.explain(evidence)
        except ReasonerError as exc:
            expl = self.fallback.explain(evidence)
            why = f"fallback to {self.fallback.name}: {self.primary.name} failed ({type(exc).__name__}: {exc})"
            return expl.model_copy(update={"flags": expl.flags + [why]})

    def answer(self, evidence: Evidence, question: str, history: list[tuple[str, str]] | None = None,
               images: ImageViews | None = None) -> str:
        try:
            if images is not None:
                return self.primary.answer(evidence, question, history, images)
            return self.primary.answer(evidence, question, history)
        except ReasonerError as exc:
            return f"[{self.primary.name} failed ({type(exc).__name__}: {exc}); answered by {self.fallback.name}]\n" \
                + self.fallback.answer(evidence, question, history)


def create_reasoner(name: str = "grounded", *, fallback: str | None = None, **kwargs: Any) -> Reasoner:
    """Build a reasoner, e.g. ``create_reasoner("llamacpp", llm="smollm2")`` or ``create_reasoner("openai",
    base_url="http://127.0.0.1:11434/v1", model="llama3")``.

    Args:
        name: a registered reasoner name (see :func:`list_reasoners`).
        fallback: a reasoner name (only ``"grounded"``) used when the model cannot be loaded or reached.
        **kwargs: backend settings, plus ``max_retries`` and ``on_ungrounded`` ("reject" or "flag") for LLMs.
    """
    if fallback not in (None, "grounded"):
        raise ConfigError(f"fallback must be 'grounded' or None, got {fallback!r}")
    try:
        reasoner = REASONERS.create(name, **kwargs)
    except (BackendUnavailableError, WeightsNotFoundError, MissingDependencyError) as exc:
        if fallback is None:
            raise
        fb = REASONERS.create(fallback)
        return _LoadFailed(fb, f"fallback to {fallback}: {name} could not start ({exc})")
    return FallbackReasoner(reasoner, REASONERS.create(fallback)) if fallback and name != fallback else reasoner


class _LoadFailed(Reasoner):
    """The fallback reasoner, flagging every explanation with why the requested one did not start."""

    def __init__(self, inner: Reasoner, why: str) -> None:
        self.inner, self.why, self.name = inner, why, inner.name

    def explain(self, evidence: Evidence, images: ImageViews | None = None) -> Explanation:
        expl = self.inner.explain(evidence)
        return expl.model_copy(update={"flags": expl.flags + [self.why]})

    def answer(self, evidence: Evidence, question: str, history: list[tuple[str, str]] | None = None,
               images: ImageViews | None = None) -> str:
        return f"[{self.why}]\n" + self.inner.answer(evidence, question, history)


def list_reasoners(pattern: str | None = None) -> list[str]:
    """Registered reasoner names."""
    return REASONERS.names(pattern)
