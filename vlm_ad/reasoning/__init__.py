"""Reasoners: evidence -> validated :class:`Explanation` (and chat answers). One registry, one factory.

Registered names:
    grounded   deterministic chain of thought over the evidence, no model (the default)
    llamacpp   a local GGUF model through llama-cpp-python (``llm="smollm2"`` or a path)
    openai     any OpenAI-compatible server (``base_url``, ``model``, ``api_key`` or $VLM_AD_OPENAI_*)
    hf         a local transformers causal-LM directory (``model_dir``)
    chat       any langchain-core chat model instance (``chat_model=``), e.g. a scripted fake in tests

``create_reasoner(name, fallback="grounded")`` answers with ``grounded`` (and says so in ``flags``) when the
model cannot be loaded or the server cannot be reached; without ``fallback`` those raise.
"""

from __future__ import annotations

from typing import Any

from vlm_ad.errors import BackendUnavailableError, ConfigError, MissingDependencyError, WeightsNotFoundError
from vlm_ad.evidence import Evidence
from vlm_ad.reasoning.base import Reasoner
from vlm_ad.reasoning.grounded import GroundedReasoner
from vlm_ad.reasoning.schema import Explanation, Step, check_grounding, parse_explanation, repair_json
from vlm_ad.registry import Registry

__all__ = [
    "REASONERS",
    "Explanation",
    "FallbackReasoner",
    "GroundedReasoner",
    "Reasoner",
    "Step",
    "check_grounding",
    "create_reasoner",
    "list_reasoners",
    "parse_explanation",
    "repair_json",
]

REASONERS: Registry[Reasoner] = Registry("reasoner")
_LLM_KW = ("max_retries", "on_ungrounded")


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
    return ChatReasoner(LlamaCppChat(model_path=str(resolve_gguf(llm)), **kw), name="llamacpp", **opts)


@REASONERS.register("openai", description="OpenAI-compatible server (base_url, model, api_key or $VLM_AD_OPENAI_*)")
def _openai(**kw: Any) -> Reasoner:
    from vlm_ad.reasoning.backends import OpenAICompatChat
    from vlm_ad.reasoning.llm import ChatReasoner

    opts = _split(kw)
    return ChatReasoner(OpenAICompatChat(**{k: v for k, v in kw.items() if v is not None}), name="openai", **opts)


@REASONERS.register("hf", description="local transformers causal-LM directory (model_dir=...)")
def _hf(*, model_dir: str | None = None, **kw: Any) -> Reasoner:
    from vlm_ad.reasoning.backends import HFChat
    from vlm_ad.reasoning.llm import ChatReasoner

    if model_dir is None:
        raise ConfigError("the hf reasoner needs model_dir (--model-dir DIR: a local transformers causal-LM folder)")
    opts = _split(kw)
    return ChatReasoner(HFChat(model_dir=str(model_dir), **kw), name="hf", **opts)


class FallbackReasoner(Reasoner):
    """Use ``primary``; when its backend is unavailable, answer with ``fallback`` and flag it."""

    def __init__(self, primary: Reasoner, fallback: Reasoner) -> None:
        self.primary, self.fallback = primary, fallback
        self.name = primary.name

    def explain(self, evidence: Evidence) -> Explanation:
        try:
            return self.primary.explain(evidence)
        except BackendUnavailableError as exc:
            expl = self.fallback.explain(evidence)
            return expl.model_copy(update={"flags": expl.flags + [f"fallback to {self.fallback.name}: {exc}"]})

    def answer(self, evidence: Evidence, question: str, history: list[tuple[str, str]] | None = None) -> str:
        try:
            return self.primary.answer(evidence, question, history)
        except BackendUnavailableError as exc:
            return f"[{self.primary.name} unavailable ({exc}); answered by {self.fallback.name}]\n" + \
                self.fallback.answer(evidence, question, history)


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

    def explain(self, evidence: Evidence) -> Explanation:
        expl = self.inner.explain(evidence)
        return expl.model_copy(update={"flags": expl.flags + [self.why]})

    def answer(self, evidence: Evidence, question: str, history: list[tuple[str, str]] | None = None) -> str:
        return f"[{self.why}]\n" + self.inner.answer(evidence, question, history)


def list_reasoners(pattern: str | None = None) -> list[str]:
    """Registered reasoner names."""
    return REASONERS.names(pattern)
