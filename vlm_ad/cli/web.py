"""The web command: ``serve`` (a local page to inspect images, chat about them and browse a report folder)."""

from __future__ import annotations

from pathlib import Path

import typer

from vlm_ad.cli._common import ReasonerOptions, console, with_reasoner_options
from vlm_ad.cli.explanations import EXEMPLARS_HELP, LIBRARY_HELP, _pipeline
from vlm_ad.cli.export import RUNTIME_HELP, RUNTIME_SETTING_HELP
from vlm_ad.errors import ConfigError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@with_reasoner_options
def serve(
    model: Path = typer.Option(..., "--model", help="A model folder written by 'vlm-ad fit' (or the demo's model/)."),
    exemplars: Path = typer.Option(None, "--exemplars", help=EXEMPLARS_HELP + " Needed to show the nearest normal "
                                   "exemplar next to each region."),
    library: Path = typer.Option(None, "--library", help=LIBRARY_HELP),
    reports: Path = typer.Option(None, "--reports", help="A folder written by 'vlm-ad report', browsed in the "
                                 "page's Report tab (filter by verdict, sort by score, open a record)."),
    examples: Path = typer.Option(None, "--examples", help="A folder of images the page offers to pick from "
                                  "(searched recursively, at most 500)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. The default serves this machine only; "
                             "another address exposes the model and the files you upload to the network."),
    port: int = typer.Option(7860, "--port", help="Port to listen on."),
    max_upload_mb: float = typer.Option(50.0, "--max-upload-mb", help="Refuse uploads larger than this (the "
                                        "pixel cap $VLM_AD_MAX_PIXELS, default 40 MP, applies as well)."),
    runtime: str = typer.Option("torch", "--runtime", help=RUNTIME_HELP),
    runtime_setting: list[str] = typer.Option(None, "--runtime-setting", help=RUNTIME_SETTING_HELP),
    *,
    reasoner: ReasonerOptions,
) -> None:
    """A local web page: upload or pick an image and see, side by side, the image, the anomaly map overlay with
    numbered regions, the verdict and its confidence, each region next to its nearest normal exemplar, the
    explanation's steps with the evidence they cite and any unverified-claim flags; then ask follow-up questions.
    A second tab browses a report folder. Needs pip install 'vlm-ad\\[serve]'.

    Example: vlm-ad serve --model vlm-ad-demo/model --exemplars vlm-ad-demo/data/brick
    --examples vlm-ad-demo/data/brick/test --reports vlm-ad-demo/report"""
    from vlm_ad._deps import require

    for module in ("fastapi", "uvicorn", "python_multipart"):  # before the model loads: say what to install first
        require(module, "vlm-ad serve")
    from vlm_ad.web import serve as run

    if max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be > 0, got {max_upload_mb}")
    for name, folder in (("--reports", reports), ("--examples", examples), ("--exemplars", exemplars)):
        if folder is not None and not folder.is_dir():
            raise ConfigError(f"{name} {folder} is not a folder")
    from vlm_ad.runtime import parse_runtime_settings

    pipe = _pipeline(model, reasoner, exemplars, library, runtime, parse_runtime_settings(runtime, runtime_setting))
    if host not in LOCAL_HOSTS:
        console.print(f"[yellow]warning:[/yellow] binding {host}: anyone who can reach this address can upload "
                      "images and use the model (no authentication)")
    shown = f"[{host}]" if ":" in host else host
    console.print(f"vlm-ad serving {model} at http://{shown}:{port}/  (Ctrl+C stops it)")
    run(pipe, host=host, port=port, reports=reports, examples=examples, max_upload_mb=max_upload_mb,
        info={"model": str(model), "reasoner": reasoner.identity(), "runtime": runtime})


def register(app: typer.Typer) -> None:
    app.command()(serve)
