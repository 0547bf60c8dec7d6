"""Image commands: ``backbones``, ``detectors``, ``demo``, ``fit``, ``detect``, ``eval``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from vlm_ad.cli._common import (
    ADAPTER_HELP,
    DATA_HELP,
    FIT_DATA_HELP,
    OPTION_HELP,
    SHOTS_HELP,
    ReasonerOptions,
    console,
    detector_options,
    progress_bar,
    task,
    with_reasoner_options,
)
from vlm_ad.cli.explanations import ADDRESS_HELP, ENGINE_HELP
from vlm_ad.cli.export import BATCH_HELP, RUNTIME_HELP, RUNTIME_SETTING_HELP


def backbones() -> None:
    """List the registered backbones and whether each runs offline on this machine."""
    from vlm_ad.backbones import BACKBONES

    table = Table(title="backbones")
    for col in ("name", "description", "status here"):
        table.add_column(col)
    for entry in BACKBONES.entries():
        shown = entry.name + "<...>" if entry.name.endswith(":") else entry.name
        table.add_row(shown, entry.description, entry.status())
    console.print(table)


def detectors(name: str = typer.Argument(None, help="A detector name: list its -o options and their defaults.")
              ) -> None:
    """List the registered detectors (use with --detector in fit and eval); with a NAME, the options it takes.

    Example: vlm-ad detectors patchcore (then vlm-ad fit DATA --out DIR -o pool_pad=sqrt -o coreset=0.05)
    """
    from vlm_ad.detectors import DETECTORS

    if name is None:
        table = Table(title="detectors")
        table.add_column("name")
        table.add_column("description")
        for entry in DETECTORS.entries():
            table.add_row(entry.name, entry.description)
        console.print(table)
        return
    import inspect

    from vlm_ad.detectors import create_detector
    from vlm_ad.detectors import detector_options as options_of
    from vlm_ad.detectors.base import POOL_PADS, SIGMA, PatchEmbedder
    from vlm_ad.errors import ConfigError

    backbone_input = {"image_size", "geometry", "min_side", "max_downscale", "layers", "input_shape"}

    if name not in DETECTORS.names():
        raise ConfigError(f"no detector {name!r}; registered: {', '.join(DETECTORS.names())}")
    try:
        det = create_detector(name)
    except ConfigError as exc:  # e.g. winclip needs a CLIP backbone even to be built
        raise ConfigError(f"{exc}; its options: python -m pydoc vlm_ad.detectors.{name}") from exc
    choices = {"geometry": "square | aspect | area", "pool_pad": " | ".join(POOL_PADS)}
    embedder = {p.name: p.default for p in inspect.signature(PatchEmbedder.__init__).parameters.values()
                if p.default is not p.empty and p.name not in backbone_input}  # the same for every backbone
    table = Table(title=f"{name}: options (-o KEY=VALUE)")
    for col in ("option", "default", "values"):
        table.add_column(col)
    for key, default in sorted(options_of(det).items()):
        if key == "backbone":
            continue  # --backbone
        if default is inspect.Parameter.empty:
            default = embedder.get(key, SIGMA if key == "sigma" else default)
        if default is not inspect.Parameter.empty:
            shown = repr(default)
        else:
            shown = "the backbone's default" if key in backbone_input else "the detector's own (pydoc)"
        table.add_row(key, escape(shown), choices.get(key, ""))
    console.print(table)
    console.print(f"What each option does: python -m pydoc {type(det).__module__} (the class's Args), and the README's "
                  "measurements of the ones that matter.", highlight=False)


def demo(
    out: Path = typer.Option(Path("vlm-ad-demo"), help="Folder for what the demo writes (data, model, report)."),
    data: str = typer.Option("synthetic", help="synthetic: defects on a real brick texture, where the method works "
                             "(fit, detect, explain, chat, report); textile: the simulated textile benchmark, where "
                             "it does not (global texture defects)."),
    backbone: str = typer.Option("dinov2-s14", help="With --data textile: backbone name (see 'vlm-ad backbones')."),
    image_size: int = typer.Option(448, help="With --data textile: input size in pixels."),
    shots: int = typer.Option(16, min=1, help="With --data textile: normal images PatchCore is fitted on."),
    per_class: int = typer.Option(6, min=1, help="With --data textile: test images per class."),
    seed: int = typer.Option(0, help="Seed for the generated defects / the image choice."),
) -> None:
    """Offline demo of the product (about a minute on 2 cores): fit PatchCore on 8 normal images, then for each test
    image a verdict, its map overlay and a grounded explanation, one chat answer, a batch report and a saved model,
    and the commands to go on with. --data textile shows where the method fails."""
    if data == "textile":
        return _textile_demo(out, backbone, image_size, shots, per_class, seed)
    if data != "synthetic":
        from vlm_ad.errors import ConfigError

        raise ConfigError(f"--data must be 'synthetic' or 'textile', got {data!r}")
    from vlm_ad.demo import run_product_demo

    with progress_bar() as progress:
        res = run_product_demo(out, seed=seed, task=lambda d, n: task(progress, d, n))
    table = Table(title="demo: PatchCore (efficientnet-lite0, 8 normal shots) on synthetic defects on a brick texture")
    for col in ("image", "truth", "score", "verdict", "explanation (grounded: every number is measured)"):
        table.add_column(col)
    correct = 0
    for path, truth, ex in res.rows:
        verdict = ex.explanation.verdict
        correct += (verdict == "anomalous") == (truth != "good")
        shown = "[red]ANOMALY[/red]" if verdict == "anomalous" else "normal"
        table.add_row(Path(path).name if truth == "good" else f"{truth}/{Path(path).name}", truth,
                      f"{ex.amap.score:.3f}", shown, escape(ex.explanation.summary))
    console.print(table)
    console.print(f"{correct} of {len(res.rows)} verdicts right; threshold {res.rows[0][2].amap.threshold:.3f} "
                  "(mean + 1 sd of the normal shots' leave-image-out scores)")
    console.print(f"[bold]Q[/bold] ({res.chat_image.parent.name}/{res.chat_image.name}): {res.question}")
    console.print(f"[bold]A:[/bold] {escape(res.answer)}", soft_wrap=True)
    console.print(f"model: {res.model_dir}/   report: {res.report_dir}/report.html (overlays with numbered regions)   "
                  f"data: {res.data_dir}/   in {res.seconds:.0f} s")
    console.print("Where it fails: texture-wide (global) defects, e.g. the simulated textile set - "
                  "'vlm-ad demo --data textile' shows image AUROC near chance there.")
    console.print("Next:\n"
                  f"  vlm-ad serve --model {res.model_dir} --exemplars {res.data_dir} --examples "
                  f"{res.data_dir / 'test'} --reports {res.report_dir}   "
                  "# the web page (pip install 'vlm-ad\\[serve]')\n"
                  f"  vlm-ad chat {res.chat_image} --model {res.model_dir}        # ask your own questions\n"
                  f"  vlm-ad report {res.data_dir / 'test'} --model {res.model_dir} --out my-report   "
                  "# explain a folder\n"
                  "Your own images: vlm-ad fit YOUR_FOLDER --shots 8 --out my-model (a folder of normal images, or "
                  "an MVTec-layout category)",
                  soft_wrap=True)  # whole command lines, so they can be copied


def _textile_demo(out: Path, backbone: str, image_size: int, shots: int, per_class: int, seed: int) -> None:
    from sklearn.metrics import roc_auc_score

    from vlm_ad.demo import run_textile_demo

    with progress_bar() as progress:
        res = run_textile_demo(out, backbone=backbone, image_size=image_size, shots=shots, per_class=per_class,
                               seed=seed, task=lambda d, n: task(progress, d, n))
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
        f"threshold {thr} (mean + 1 sd of the normal shots' leave-image-out scores); "
        f"image AUROC on these {len(scores)} images: {roc_auc_score(res.labels, scores):.3f}; "
        f"correct verdicts: {correct}/{len(scores)} - global texture defects are what local patch methods miss"
    )
    console.print(f"overlays written to {res.out_dir}/ in {res.seconds:.1f} s")


# --backbone when none is given: efficientnet-lite0, except zero-shot mutual, whose own default dinov2-s14 beat it on
# 16-17 of 24 cells of each half of the dev suite and lost on 5 (eval/results/generalization.md)
DEFAULT_BACKBONE = "efficientnet-lite0"
DETECTOR_BACKBONE = {"mutual": "dinov2-s14", "ensemble": "efficientnet-lite0+dinov2-s14",
                     "adapted": "dinov2-s14"}  # adapted: its only backbone (LoRA on DINOv2's blocks)


def _backbone(backbone: str | None, adapter: Path | None, detector: str = "patchcore") -> str | None:
    """The --backbone to use: as given; else the adapter's own (None lets the detector read it); else the
    detector's default."""
    return backbone or (None if adapter else DETECTOR_BACKBONE.get(detector, DEFAULT_BACKBONE))


def fit(
    data: str = typer.Argument(..., help=FIT_DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Folder to save the fitted model in."),
    detector: str = typer.Option("patchcore", help="Detector name (see 'vlm-ad detectors')."),
    backbone: str = typer.Option(None, help="Backbone name (see 'vlm-ad backbones'); default efficientnet-lite0 "
                                 "(dinov2-s14 for --detector mutual and adapted, efficientnet-lite0+dinov2-s14 for "
                                 "--detector ensemble: backbones joined by '+'), or with --adapter the adapter's own."),
    shots: int = typer.Option(None, help=SHOTS_HELP),
    seed: int = typer.Option(0, help="Seed for drawing shots and for the coreset."),
    option: list[str] = typer.Option([], "--option", "-o", help=OPTION_HELP),
    adapter: Path = typer.Option(None, "--adapter", help=ADAPTER_HELP),
) -> None:
    """Fit a detector on the normal training images of DATA and save it to --out.

    Example: vlm-ad fit ../shared/data/magnetic_tile --shots 8 --out models/tile-8shot

    A plain folder of normal images works too: vlm-ad fit my_good_parts/ --out models/parts

    With an adapter: vlm-ad fit DATA --detector adapted --backbone dinov2-s14 --adapter adapters/NAME --out DIR
    """
    from vlm_ad.data.splits import open_train, shot_indices
    from vlm_ad.evaluation.run import fit_detector

    train, source = open_train(data, seed=seed)
    n = len(shot_indices(train, shots, seed))  # counted without reading them: fit_detector reads each image once
    console.print(f"normal images: {source}; fitting on {'all ' if shots is None else ''}{n} of {len(train)}")
    with progress_bar() as progress:
        det, seconds = fit_detector(train, detector=detector, backbone=_backbone(backbone, adapter, detector),
                                    shots=shots, seed=seed, progress=task(progress, "embedding normal images", n),
                                    **detector_options(option, detector, adapter))
    det.save(out)
    console.print(f"fitted {detector} ({det.backbone}) on {n} normal images in {seconds:.1f} s; "
                  f"threshold {det.threshold_}; saved to {out}/")
    console.print(det.summary(), soft_wrap=True)


def detect(
    images: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    model: Path = typer.Option(..., "--model", help="A model folder written by 'vlm-ad fit' (or by 'vlm-ad export', "
                               "with --runtime onnx|openvino)."),
    out: Path = typer.Option(..., "--out", help="Output folder: <stem>.json and <stem>_overlay.png per image."),
    threshold: float = typer.Option(None, help="Override the model's image threshold."),
    engine: str = typer.Option("local", "--engine", help=ENGINE_HELP),
    address: str = typer.Option(None, "--address", help=ADDRESS_HELP),
    runtime: str = typer.Option("torch", "--runtime", help=RUNTIME_HELP),
    runtime_setting: list[str] = typer.Option(None, "--runtime-setting", help=RUNTIME_SETTING_HELP),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help=BATCH_HELP),
) -> None:
    """Score images with a fitted model: per image a JSON record (score, label, regions, nearest normal
    exemplars) and an overlay PNG. Unreadable images are reported and skipped; the others are still written.

    Exit codes: 0 every image written, 1 some images skipped (named above), 2 a usage or configuration error."""
    from vlm_ad.engines import PipelineSpec, create_engine
    from vlm_ad.pipeline import Pipeline, detect_images
    from vlm_ad.runtime import load_runtime_detector, parse_runtime_settings

    settings = parse_runtime_settings(runtime, runtime_setting)
    det = load_runtime_detector(model, runtime, settings=settings)
    if threshold is not None:
        det.set_threshold(threshold)
    runner = create_engine(engine, Pipeline(det), PipelineSpec(model, threshold=threshold, runtime=runtime,
                                                               runtime_settings=settings),
                           address=address, batch_size=batch_size)
    t0 = time.perf_counter()
    with progress_bar() as progress:
        handle = progress.add_task("detecting", total=None)
        results = detect_images(images, det, out, engine=runner, on_total=lambda n: progress.update(handle, total=n),
                                progress=lambda n: progress.advance(handle, n))
    seconds = time.perf_counter() - t0
    table = Table(title=f"{len(results)} images, model {model}")
    for col in ("image", "score", "verdict", "regions"):
        table.add_column(col)
    for r in results:
        if r.record is None:
            table.add_row(str(r.path), "-", "[yellow]skipped[/yellow]", "-")
        else:
            verdict = {1: "[red]ANOMALY[/red]", 0: "normal", None: "-"}[r.record["label"]]
            table.add_row(str(r.path), f"{r.record['score']:.3f}", verdict, str(len(r.record["regions"])))
    console.print(table)
    console.print(det.summary(), soft_wrap=True)
    failed = [r for r in results if r.record is None]
    for r in failed:
        console.print(f"[yellow]skipped[/yellow] {r.path}: {r.error}", soft_wrap=True)
    skipped = f"; {len(failed)} skipped" if failed else ""
    written = len(results) - len(failed)
    rate = f" ({written / seconds:.1f} images/s, files written)" if written and seconds > 0 else ""
    console.print(f"wrote {written} results to {out}/ in {seconds:.1f} s{rate}{skipped}")
    if failed or not results:
        raise typer.Exit(1)


@with_reasoner_options
def eval_cmd(
    data: str = typer.Argument(..., help=DATA_HELP),
    detector: str = typer.Option("patchcore", help="Detector name (see 'vlm-ad detectors')."),
    backbone: str = typer.Option(None, help="Backbone name (see 'vlm-ad backbones'); default efficientnet-lite0 "
                                 "(dinov2-s14 for --detector mutual and adapted, efficientnet-lite0+dinov2-s14 for "
                                 "--detector ensemble: backbones joined by '+'), or with --adapter the adapter's own."),
    shots: int = typer.Option(None, help=SHOTS_HELP),
    seed: int = typer.Option(0, help="Seed for drawing shots (and the textile split)."),
    json_out: Path = typer.Option(None, "--json", help="Write the metrics to this JSON file."),
    textile_test: int = typer.Option(None, help="With DATA=textile: balanced test subsample size."),
    option: list[str] = typer.Option([], "--option", "-o", help=OPTION_HELP),
    adapter: Path = typer.Option(None, "--adapter", help=ADAPTER_HELP),
    explanations: bool = typer.Option(False, "--explanations", help="Also explain every test image and score the "
                                      "explanations (cited regions vs masks, text vs references)."),
    naming: bool = typer.Option(False, "--naming", help="Instead: leave-image-out defect naming accuracy with a "
                                "labelled-defect library built from DATA's masked test defects."),
    shots_per_type: int = typer.Option(3, "--shots-per-type", min=1, help="With --naming or --qa: labelled-defect "
                                       "library examples per type."),
    qa: bool = typer.Option(False, "--qa", help="Also answer multiple-choice questions about every test image "
                            "through the chat loop (is there a defect / where / which type / how large) and report "
                            "accuracy per kind beside chance; the reasoner options choose who answers."),
    *,
    reasoner: ReasonerOptions,
) -> None:
    """Fit on DATA's normal training images and evaluate on its test split: image AUROC/AP/F1-max and, with
    masks, pixel AUROC/AP, AUPRO (FPR <= 0.3), IoU and pointing game, plus fit time, images/s and peak memory.
    With --explanations, the reasoner options choose who explains."""
    from vlm_ad.data import open_data
    from vlm_ad.data.splits import shot_indices
    from vlm_ad.evaluation.run import evaluate_detector, fit_detector, split_mask_problems

    if naming:
        from vlm_ad.cli.adapters import naming_eval

        return naming_eval(data, shots_per_type=shots_per_type, seed=seed, json_out=json_out)
    train, test = open_data(data, textile_test=textile_test, seed=seed)
    n = len(shot_indices(train, shots, seed))  # counted without reading them: fit_detector reads each image once
    problems = split_mask_problems(test)
    for line in problems[:10]:
        console.print(f"[yellow]mask problem[/yellow] {line}", soft_wrap=True)
    if problems:
        console.print(f"[yellow]{len(problems)} anomalous image(s) without a usable mask: pixel metrics (pixel "
                      "AUROC/AP, AUPRO, IoU, pointing game) will be skipped; image metrics are unaffected[/yellow]")
    with progress_bar() as progress:
        det, fit_seconds = fit_detector(train, detector=detector, backbone=_backbone(backbone, adapter, detector),
                                        shots=shots, seed=seed,
                                        progress=task(progress, "fit", n),
                                        **detector_options(option, detector, adapter))
        res = evaluate_detector(det, test, progress=task(progress, "test", len(test)), mask_problems=problems)
    record = {"data": str(data), "detector": detector, "backbone": str(det.backbone),
              "shots": "all" if shots is None else shots, "n_train": n, "seed": seed, "fit_seconds": fit_seconds,
              **res.metrics}
    if explanations:
        from vlm_ad.evaluation.explanations import score_explanations

        with progress_bar() as progress:
            expl, _ = score_explanations(data, det, test, res.maps, reasoner.build(),
                                         progress=task(progress, "explain", len(test)))
        record |= {f"explain/{k}": v for k, v in expl.items()}
    if qa:
        from vlm_ad.evaluation.qa import qa_on_data

        with progress_bar() as progress:
            qa_metrics, _ = qa_on_data(data, det, test, res.maps, reasoner.build(), shots_per_type=shots_per_type,
                                       seed=seed, progress=task(progress, "questions", len(test)))
        record |= qa_metrics
    table = Table(title=f"{detector} / {det.backbone} / shots {record['shots']} / seed {seed} on {data}")
    table.add_column("metric")
    table.add_column("value")
    for key, value in record.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    write_json(json_out, record)


def write_json(path: Path | None, record: dict) -> None:
    """Write a metrics record atomically (when ``path`` is given) and say where."""
    from vlm_ad._cache import atomic_write_bytes

    if path:
        atomic_write_bytes(path, json.dumps(record, indent=2).encode())
        console.print(f"metrics written to {path}")


def register(app: typer.Typer) -> None:
    for command in (backbones, detectors, demo, fit, detect):
        app.command()(command)
    app.command("eval")(eval_cmd)
