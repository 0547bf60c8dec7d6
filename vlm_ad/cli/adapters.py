"""Adapter and naming commands: ``vlm-ad library ...`` (a labelled-defect library that names regions) and
``vlm-ad adapt`` (per-category LoRA adapters)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from vlm_ad.cli._common import FIT_DATA_HELP, console, progress_bar
from vlm_ad.errors import ConfigError

library_app = typer.Typer(help="A labelled-defect library that names detected regions (add, show, name).",
                          no_args_is_help=True)


def _open_library(path: Path, features: str | None):
    from vlm_ad.naming import DEFAULT_FEATURES, DefectLibrary

    if (path / "library.json").is_file():
        lib = DefectLibrary.load(path)
        if features and features != lib.features:
            raise ConfigError(f"{path} uses {lib.features!r} features, not {features!r}; use another folder")
        return lib
    return DefectLibrary(features=features or DEFAULT_FEATURES)


@library_app.command("add")
def library_add(
    library: Path = typer.Argument(..., help="Library folder (created if missing)."),
    from_data: str = typer.Option(None, "--from", help="Add the masked defects of this MVTec-layout category."),
    per_type: int = typer.Option(None, help="With --from: at most this many examples per defect type."),
    image: Path = typer.Option(None, help="One labelled example: its image file..."),
    mask: Path = typer.Option(None, help="...its region mask file..."),
    label: str = typer.Option(None, help="...and its defect name."),
    features: str = typer.Option(None, help="New library only: patches+cells (default: names the regions a "
                                 "detector's map shows best), patches (DINOv2 patch votes alone, the default "
                                 "before), combined (best on exact masks), descriptors or deep."),
    seed: int = typer.Option(0, help="Seed for choosing --per-type examples."),
) -> None:
    """Add labelled defect regions to a library, from a dataset's test/<type> folders or one image + mask + label.

    Example: vlm-ad library add libs/tile --from ../shared/data/magnetic_tile --per-type 5
    """
    from vlm_ad.data import load_image, load_mask

    if (from_data is None) == (image is None):
        raise ConfigError("give either --from DATA or --image IMG --mask MASK --label NAME")
    lib = _open_library(library, features)
    before = len(lib)
    if from_data is not None:
        with progress_bar() as progress:
            task = progress.add_task("describing defects", total=None)
            lib.add_mvtec(from_data, per_type=per_type, seed=seed, progress=lambda n: progress.advance(task, n))
    else:
        if mask is None or not label:
            raise ConfigError("--image needs --mask MASK and --label NAME too")
        img = load_image(image)
        lib.add(img, load_mask(mask, img.shape[:2]), label, str(image))
    lib.save(library)
    console.print(f"added {len(lib) - before} examples; {library}/ now holds {lib.summary()}")


@library_app.command("show")
def library_show(library: Path = typer.Argument(..., help="Library folder.")) -> None:
    """List a library's labels, example counts and features."""
    from collections import Counter

    from vlm_ad.naming import DefectLibrary

    lib = DefectLibrary.load(library)
    how = f"{len(lib.patch_owner)} patches vote" if lib.uses_patches else f"k = {lib.k}"
    how += f", {len(lib.cell_owner)} cells vote" if lib.uses_cells else ""
    table = Table(title=f"{library} ({lib.features} features, {how})")
    table.add_column("label")
    table.add_column("examples")
    if lib.uses_patches:
        table.add_column("patches")
    patches = Counter(lib.labels[i] for i in lib.patch_owner)
    for lab, n in lib.summary().items():
        table.add_row(lab, str(n), *([str(patches[lab])] if lib.uses_patches else []))
    console.print(table)


@library_app.command("name")
def library_name(
    library: Path = typer.Argument(..., help="Library folder."),
    image: Path = typer.Option(..., help="Image file."),
    mask: Path = typer.Option(..., help="Mask file of the region to name."),
) -> None:
    """Name one region with a library and print the explanation."""
    from vlm_ad.data import load_image, load_mask
    from vlm_ad.naming import DefectLibrary

    img = load_image(image)
    res = DefectLibrary.load(library).name(img, load_mask(mask, img.shape[:2]))
    console.print(f"{res.name} (confidence {res.confidence:.2f}, distance {res.distance:.3f}): {res.explanation}")


def adapt(
    data: str = typer.Argument(..., help=FIT_DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Adapter folder, e.g. adapters/NAME."),
    images: int = typer.Option(32, min=2, help="Normal training images used (drawn with --seed)."),
    epochs: int = typer.Option(6, min=1),
    steps: int = typer.Option(8, min=1, help="Steps per epoch."),
    batch_size: int = typer.Option(8, min=2),
    rank: int = typer.Option(4, min=1, help="LoRA rank."),
    blocks: str = typer.Option("6,7", help="DINOv2 blocks that get LoRA, comma-separated."),
    image_size: int = typer.Option(224, help="Square training input size (a multiple of 14); the adapted detector "
                                             "embeds at PatchCore's dinov2-s14 input."),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(True, help="Resume from OUT/checkpoint when it exists."),
) -> None:
    """Train a per-category LoRA adapter (DINOv2 + cosine head) on DATA's normal images against synthetic defects.

    Use it with: vlm-ad eval DATA --detector adapted --backbone dinov2-s14 --adapter OUT
    """
    from vlm_ad.adapt import AdaptConfig, train_adapter
    from vlm_ad.data import open_train, select_shots

    cfg = AdaptConfig(epochs=epochs, steps_per_epoch=steps, batch_size=batch_size, rank=rank, seed=seed,
                      lora_blocks=tuple(int(b) for b in blocks.split(",")), image_size=image_size)
    train, _ = open_train(data, seed=seed)
    normal = [s.image for s in select_shots(train, images, seed)]
    with progress_bar() as progress:
        task = progress.add_task("adapting", total=cfg.epochs * cfg.steps_per_epoch)
        def advance(stage: str, done: int, total: int) -> None:
            progress.update(task, completed=done, description=stage)

        res = train_adapter(normal, cfg, out=out, resume=resume, progress=advance)
    last = res.history[-1] if res.history else {}
    console.print(f"adapter written to {out}/ in {res.seconds:.0f} s; best epoch {res.best_epoch}; "
                  f"last held-out synthetic loss {last.get('val_loss', float('nan')):.4f}")


def naming_eval(data: str, *, shots_per_type: int, seed: int, json_out: Path | None) -> None:
    """``vlm-ad eval DATA --naming``: print and optionally write naming accuracy and the confusion matrix."""
    from vlm_ad.cli.images import write_json
    from vlm_ad.evaluation.naming import evaluate_naming_data

    with progress_bar() as progress:
        task = progress.add_task("describing defects", total=None)
        rec = evaluate_naming_data(data, shots_per_type=shots_per_type, seed=seed,
                                   progress=lambda n: progress.advance(task, n))
    table = Table(title=f"defect naming, {shots_per_type} examples per type, leave-image-out, on {data}")
    table.add_column("truth \\ named")
    for t in rec["types"]:
        table.add_column(t)
    for t, row in zip(rec["types"], rec["confusion"]):
        table.add_row(t, *map(str, row))
    console.print(table)
    console.print(f"type_accuracy {rec['type_accuracy']:.3f} (balanced {rec['balanced_accuracy']:.3f}); chance "
                  f"{rec['chance_uniform']:.3f} uniform, {rec['chance_majority']:.3f} majority type")
    write_json(json_out, rec)


def register(app: typer.Typer) -> None:
    app.add_typer(library_app, name="library")
    app.command()(adapt)
