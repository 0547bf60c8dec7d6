"""Explanation commands: ``chat`` (questions about one image) and ``report`` (a folder into a batch report)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markdown import Markdown
from rich.markup import escape
from rich.panel import Panel

from vlm_ad.cli._common import ReasonerOptions, console, progress_bar, with_reasoner_options
from vlm_ad.cli.export import BATCH_HELP, RUNTIME_HELP, RUNTIME_SETTING_HELP

EXEMPLARS_HELP = "Folder the model was fitted on (e.g. the MVTec category); contrasts then use the exemplar images."
ENGINE_HELP = ("Who computes: local (this process) or ray (a Ray actor per CPU, each loading the model once; "
               "pip install 'vlm-ad[scale]'). Same records either way.")
ADDRESS_HELP = ("With --engine ray: join the cluster at this address (printed by 'ray start --head'; 'auto' finds one "
                "on this machine). Default: start a local cluster for this run. Every worker must be able to read "
                "the images and the model.")
CHAT_HELP = "Questions: where is it? what type? how sure? how does it differ from normal? show the map. " \
            "Commands: /save, /evidence, /help, /quit."
LIBRARY_HELP = ("A defect library folder written by 'vlm-ad library add' (names each region after its nearest "
                "labelled defect).")


def _pipeline(model: Path, reasoner: ReasonerOptions, exemplars: Path | None, library: Path | None,
              runtime: str = "torch", runtime_settings: dict | None = None):
    from vlm_ad.pipeline import Pipeline
    from vlm_ad.runtime import load_runtime_detector

    namer = None
    if library is not None:
        from vlm_ad.naming import DefectLibrary

        namer = DefectLibrary.load(library)
    return Pipeline(load_runtime_detector(model, runtime, settings=runtime_settings), reasoner.build(), namer=namer,
                    exemplar_root=exemplars)


def _flags(flags: list[str]) -> str:
    """The explanation's flags as printable rich text (brackets in them escaped), or "" without flags."""
    return "".join(f"\n[yellow]flag:[/yellow] {escape(f)}" for f in flags)


@with_reasoner_options
def chat(
    image: Path = typer.Argument(..., help="The image to talk about."),
    model: Path = typer.Option(..., "--model", help="A model folder written by 'vlm-ad fit'."),
    ask: str = typer.Option(None, "--ask", help="Answer this one question and exit (non-interactive)."),
    out: Path = typer.Option(Path("vlm-ad-chat"), "--out", help="Folder for /save (transcript and overlay)."),
    exemplars: Path = typer.Option(None, "--exemplars", help=EXEMPLARS_HELP),
    library: Path = typer.Option(None, "--library", help=LIBRARY_HELP),
    *,
    reasoner: ReasonerOptions,
) -> None:
    """Ask questions about one image, answered from its measured evidence (multi-turn; /save writes the transcript
    and the overlay). Example: vlm-ad chat part.png --model models/tile --ask "where is the defect?" """
    from vlm_ad.chat import ChatSession

    pipe = _pipeline(model, reasoner, exemplars, library)
    ex = pipe.run(image)
    session = ChatSession(ex, pipe.reasoner)
    e = ex.explanation
    if ask is not None:  # user and model text is escaped: "[unverified: ...]" must print, not vanish as markup
        console.print(f"[bold]Q:[/bold] {escape(ask)}")
        console.print(f"[bold]A:[/bold] {escape(session.ask(ask))}{_flags(e.flags)}", soft_wrap=True)
        return
    console.print(Panel(f"{escape(e.summary)}\n[dim]verdict {e.verdict}, confidence {e.confidence:.2f}, reasoner "
                        f"{escape(pipe.reasoner.name)}[/dim]{_flags(e.flags)}", title=escape(str(image))))
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


@with_reasoner_options
def report(
    images: Path = typer.Argument(..., help="A folder of images (searched recursively) or one image."),
    model: Path = typer.Option(..., "--model", help="A model folder written by 'vlm-ad fit'."),
    out: Path = typer.Option(..., "--out", help="Output folder: report.jsonl, report.md, report.html, overlays/."),
    exemplars: Path = typer.Option(None, "--exemplars", help=EXEMPLARS_HELP),
    library: Path = typer.Option(None, "--library", help=LIBRARY_HELP),
    restart: bool = typer.Option(False, "--restart", help="Replace a report in OUT made by another model, "
                                 "reasoner or library (without it such a folder is refused)."),
    engine: str = typer.Option("local", "--engine", help=ENGINE_HELP),
    address: str = typer.Option(None, "--address", help=ADDRESS_HELP),
    runtime: str = typer.Option("torch", "--runtime", help=RUNTIME_HELP),
    runtime_setting: list[str] = typer.Option(None, "--runtime-setting", help=RUNTIME_SETTING_HELP),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help=BATCH_HELP),
    *,
    reasoner: ReasonerOptions,
) -> None:
    """Explain every image into a batch report, exactly once per image. Resumable: a rerun skips images already
    explained by the same model and reasoner and retries failures (their records are replaced, never duplicated);
    an unreadable image or an LLM failure is recorded and the batch goes on. One run per OUT at a time.

    Exit codes: 0 every image explained, 1 some images failed (see their records), 2 a usage or configuration
    error (nothing written)."""
    from vlm_ad.engines import PipelineSpec, create_engine
    from vlm_ad.report import report_provenance, run_report
    from vlm_ad.runtime import parse_runtime_settings

    settings = parse_runtime_settings(runtime, runtime_setting)
    pipe = _pipeline(model, reasoner, exemplars, library, runtime, settings)
    ident = reasoner.identity() + (f" library={library}" if library else "") + \
        (f" runtime={runtime}" if runtime != "torch" else "")
    prov = report_provenance(pipe, model, ident)
    runner = create_engine(engine, pipe, PipelineSpec(model, reasoner.build, exemplars, library=library,
                                                      runtime=runtime, runtime_settings=settings),
                           address=address, batch_size=batch_size)
    with progress_bar() as progress:
        handle = progress.add_task("explaining", total=None)
        res = run_report(images, pipe, out, provenance=prov, restart=restart, engine=runner,
                         on_total=lambda n: progress.update(handle, total=n),
                         progress=lambda n: progress.advance(handle, n))
    console.print(f"{res.done} explained, {res.skipped} already done, {res.failed} failed in {res.seconds:.1f} s; "
                  f"see {out}/report.html, report.md and report.jsonl")
    if res.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(chat)
    app.command()(report)
