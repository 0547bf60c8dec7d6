"""The ``vlm-ad`` command line: one module per command group, each registering its commands on :data:`app`.

================  ===========================================================
module            commands
================  ===========================================================
``images``        backbones, detectors, demo, fit, detect, eval
``explanations``  chat, report
``adapters``      library add|show|name, adapt
``video``         video fit|detect|eval
``web``           serve
``export``        export (ONNX / OpenVINO; --runtime on detect and report)
``llm``           llm list|fetch (named local GGUF models)
================  ===========================================================

Commands only parse options, call library functions and print; what they share (console, progress bars,
``-o KEY=VALUE``, the reasoner options) is in ``_common``.
"""

from __future__ import annotations

import typer
from rich.console import Console

from vlm_ad.cli import adapters, explanations, export, images, llm, video, web
from vlm_ad.errors import VlmAdError

__all__ = ["app", "main"]

app = typer.Typer(
    help=(
        "vlm-ad: explainable visual anomaly detection.\n\n"
        "Start with 'vlm-ad demo' (offline, about a minute), then 'vlm-ad backbones' to see which feature "
        "extractors run on this machine."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from vlm_ad import __version__

        typer.echo(f"vlm-ad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """vlm-ad: explainable visual anomaly detection."""


for _module in (images, explanations, adapters, video, web, export, llm):
    _module.register(app)


def main() -> None:
    """Console entry point: VlmAdError becomes a one-line message and exit code 2, not a traceback."""
    try:
        app()
    except VlmAdError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None
