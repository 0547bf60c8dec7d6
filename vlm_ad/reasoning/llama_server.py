"""Serve a local GGUF model as an OpenAI-compatible server (llama-cpp-python's ``llama_cpp.server``), for
``--reasoner openai --base-url http://HOST:PORT/v1`` or any other OpenAI client.

llama-cpp-python 0.3.36 repacks the weights for AMX on CPUs that have it, and its server then dies in the first
decode (general protection fault in ``libggml-cpu.so``, whatever the request: ``python -m llama_cpp.server --model
SmolLM2-135M-Instruct.Q4_1.gguf`` + one plain chat completion). :func:`serve_gguf` loads the model with plain
weight buffers, as the in-process ``llamacpp`` reasoner does, and otherwise runs the same server. That server
takes the reply schema in llama.cpp's form (``response_format: {"type": "json_object", "schema": ...}``), which the
``openai`` reasoner switches to after the OpenAI form is refused.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from vlm_ad._deps import require
from vlm_ad.errors import MissingDependencyError

__all__ = ["serve_gguf", "server_app"]

#: the modules llama_cpp.server needs beyond llama-cpp-python itself (its ``server`` extra)
SERVER_MODULES = ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def _require_server() -> None:
    require("llama_cpp", "vlm-ad llm serve")
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(f"llama-cpp-python's server needs {', '.join(missing)}; pip install "
                                     "'vlm-ad[llm-local]' (or pip install 'llama-cpp-python[server]==0.3.36')")


def server_app(llm: str, *, n_ctx: int = 4096, n_threads: int | None = None, host: str = "127.0.0.1",
               port: int = 8000) -> Any:
    """The FastAPI app of ``llama_cpp.server`` with ``llm`` loaded (a name of ``vlm-ad llm list``, ``smollm2`` or a
    ``.gguf`` path, as ``--llm`` takes), its weights in plain buffers (no AMX repacking). The model is served under
    its ``--llm`` name and answers any model name."""
    _require_server()
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    from vlm_ad.reasoning.backends import _no_weight_repacking, resolve_gguf

    path = resolve_gguf(llm)
    settings = ModelSettings(model=str(path), model_alias=llm, n_ctx=n_ctx, verbose=False,
                             **({"n_threads": n_threads, "n_threads_batch": n_threads} if n_threads else {}))
    with _no_weight_repacking():  # create_app loads the model
        return create_app(server_settings=ServerSettings(host=host, port=port), model_settings=[settings])


def serve_gguf(llm: str, *, host: str = "127.0.0.1", port: int = 8000, n_ctx: int = 4096,
               n_threads: int | None = None) -> None:
    """Serve ``llm`` at ``http://host:port/v1`` until interrupted (see :func:`server_app`)."""
    app = server_app(llm, n_ctx=n_ctx, n_threads=n_threads, host=host, port=port)
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":  # python -m vlm_ad.reasoning.llama_server LLM [PORT]: what the integration test starts
    import sys

    serve_gguf(sys.argv[1], port=int(sys.argv[2]) if len(sys.argv) > 2 else 8000)
