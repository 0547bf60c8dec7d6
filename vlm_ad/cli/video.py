"""Video commands: ``vlm-ad video fit|detect|eval``, explained anomalous events in videos."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from vlm_ad.cli._common import ReasonerOptions, console, progress_bar, with_reasoner_options
from vlm_ad.cli._common import task as _task

video_app = typer.Typer(help="Video: fit on normal clips, detect explained anomalous events, evaluate.",
                        no_args_is_help=True)

CUES_HELP = ("Comma-separated cues: motion, objects, appearance, flow (the bare optical-flow baseline); see "
             "vlm_ad.video.list_cues().")


SIGMA_HELP = ("Temporal smoothing of each cue's score, in frames (Gaussian sigma; 0 = none) before it is calibrated. "
              "More smoothing hides flicker and one-frame false alarms but blurs the start and end of short events. "
              "Default: the model's (4, chosen on UCSD Ped2 Test001-003, eval/results/video.md); on a saved model a "
              "new value recalibrates it on its normal calibration clips, no refit.")
FUSION_HELP = ("How the calibrated cues are combined. 'mean' (default): the mean of the cue surprises, i.e. the "
               "product of their false-alarm rates (Fisher's rule), so cues that agree add up; it matched or beat the "
               "best single cue on both unseen halves of UCSD Ped2. 'max': the most surprising cue; it catches what "
               "only one cue sees but adds every cue's false alarms (below the best cue on Ped2). Either way the fused "
               "score is recalibrated on the normal calibration clips: 2.0 = one normal frame in 100 scores this high, "
               "3.0 = one in 1000.")

def _model_kw(cues: str, appearance_stride: int, appearance_frames: int, *, sigma: float | None = None,
              fusion: str | None = None) -> dict:
    names = [c.strip() for c in cues.split(",") if c.strip()]
    opts = {"appearance": {"stride": appearance_stride, "max_frames": appearance_frames}}
    kw = {"cues": names, "cue_options": {k: v for k, v in opts.items() if k in names}}
    return kw | {k: v for k, v in (("sigma", sigma), ("fusion", fusion)) if v is not None}


def _load(model_path: Path, sigma: float | None, fusion: str | None):
    """A saved video model, recalibrated when --sigma or --fusion differ from its own."""
    from vlm_ad.video import VideoModel

    model = VideoModel.load(model_path)
    if (sigma is not None and sigma != model.config.sigma) or (fusion is not None and fusion != model.config.fusion):
        model.recalibrated(sigma=sigma, fusion=fusion)
        console.print(f"recalibrated {model_path} with sigma {model.config.sigma:g}, fusion {model.config.fusion}; "
                      f"event threshold {model.threshold_:.3f}")
    return model


def _train_clips(train_dir: Path):
    from vlm_ad.video import open_clips

    return open_clips(train_dir, "train" if (train_dir / "train").is_dir() else None)


def _fit(train_dir: Path, kw: dict):
    from vlm_ad.video import VideoModel

    clips = _train_clips(train_dir)
    model = VideoModel(**kw)
    with progress_bar() as progress:
        model.fit(clips, progress=_task(progress, f"fitting on {len(clips)} normal clips", None))
    for line in model.fit_problems_:
        console.print(f"[yellow]skipped[/yellow] {line}", soft_wrap=True)
    return model, clips


@video_app.command("fit")
def fit_cmd(
    train_dir: Path = typer.Argument(..., help="Normal clips: a UCSD root (uses train/), a folder of clip "
                                    "folders or video files, one frame folder or one video."),
    out: Path = typer.Option(..., "--out", help="Folder to save the video model in."),
    cues: str = typer.Option("motion,objects,appearance", help=CUES_HELP),
    appearance_stride: int = typer.Option(1, min=1, help="Score every N-th frame with the appearance cue."),
    appearance_frames: int = typer.Option(120, min=1, help="Normal frames in the appearance memory bank."),
    sigma: float = typer.Option(None, min=0, help=SIGMA_HELP),
    fusion: str = typer.Option(None, help=FUSION_HELP),
) -> None:
    """Fit the cues on normal clips, calibrate them on held-out normal clips (a score becomes how rare it is among
    normal frames), and save the model.

    Example: vlm-ad video fit ../shared/data/ucsd_ped2 --out models/ped2
    """
    model, clips = _fit(train_dir, _model_kw(cues, appearance_stride, appearance_frames, sigma=sigma, fusion=fusion))
    model.save(out)
    console.print(f"fitted {', '.join(model.cues)} on {len(clips)} clips; event threshold {model.threshold_:.3f}; "
                  f"saved to {out}/")
    for rule in model.cues["objects"].rules_text() if "objects" in model.cues else []:
        console.print(f"  rule: {rule}", soft_wrap=True)


@video_app.command("detect")
@with_reasoner_options
def detect_cmd(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="A video file, a frame folder or a folder of clips."),
    model_path: Path = typer.Option(..., "--model", help="A folder written by 'vlm-ad video fit'."),
    out: Path = typer.Option(..., "--out", help="Output folder: <clip>_scores.csv, <clip>.gif, events.json."),
    gif: bool = typer.Option(True, help="Write an annotated GIF per clip."),
    gif_stride: int = typer.Option(1, min=1, help="Keep every N-th frame in the GIF."),
    sigma: float = typer.Option(None, min=0, help=SIGMA_HELP),
    fusion: str = typer.Option(None, help=FUSION_HELP),
    *,
    reasoner: ReasonerOptions,
) -> None:
    """Score every frame, find anomalous events and explain them (the reasoner options choose who explains).
    Unreadable frames or clips are reported and skipped; finished clips are always written. An LLM reasoner that
    gives no valid, grounded explanation for an event leaves the grounded one in place, with the failure in its flags.

    Example: vlm-ad video detect ../shared/data/ucsd_ped2/test/Test001 --model models/ped2 --out out/ped2
    """
    from vlm_ad.video.batch import detect_clips

    model = _load(model_path, sigma, fusion)
    explainer = None if reasoner.reasoner == "grounded" else reasoner.build()
    with progress_bar() as progress:
        res = detect_clips(model, input_path, out, gif=gif, gif_stride=gif_stride, reasoner=explainer,
                           model_name=str(model_path), progress=lambda name: _task(progress, f"scoring {name}", None))
    for clip in res.clips:
        for e in clip.events:
            console.print(f"[red]event[/red] {clip.name} {escape(e.explanation.summary)}", soft_wrap=True)
        console.print(f"{clip.name}: {clip.frames} frames, {len(clip.events)} events, "
                      f"{clip.frames_per_second:.1f} frames/s")
    for line in res.skipped:
        console.print(f"[yellow]skipped[/yellow] {escape(line)}", soft_wrap=True)
    events = res.events
    console.print(f"wrote {len(events)} events to {out}/events.json")


@video_app.command("eval")
def eval_cmd(
    data: Path = typer.Argument(..., help="A UCSD-layout root: train/, test/, frame_labels.csv, ground_truth/."),
    json_out: Path = typer.Option(None, "--json", help="Write the metrics to this JSON file."),
    model_dir: Path = typer.Option(None, "--model", help="Use this fitted model instead of fitting on DATA/train."),
    cues: str = typer.Option("motion,objects,appearance", help=CUES_HELP),
    appearance_stride: int = typer.Option(1, min=1, help="Score every N-th frame with the appearance cue."),
    appearance_frames: int = typer.Option(120, min=1, help="Normal frames in the appearance memory bank."),
    sigma: float = typer.Option(None, min=0, help=SIGMA_HELP),
    fusion: str = typer.Option(None, help=FUSION_HELP),
) -> None:
    """Fit on DATA/train (or load --model), score DATA/test: frame AUROC micro and macro (fused and per cue),
    pixel AUROC on frames with masks, and the share of event frames whose cited region overlaps the mask."""
    from vlm_ad._cache import atomic_write_bytes
    from vlm_ad.evaluation.video import evaluate_results
    from vlm_ad.video import load_frame_labels, open_clips

    if model_dir:
        model = _load(model_dir, sigma, fusion)
    else:
        model, _ = _fit(data, _model_kw(cues, appearance_stride, appearance_frames, sigma=sigma, fusion=fusion))
    labels_path = data / "frame_labels.csv"
    labels = load_frame_labels(labels_path) if labels_path.exists() else {}
    results = []
    with progress_bar() as progress:
        for clip in open_clips(data, "test"):
            results.append(model.score_clip(clip, progress=_task(progress, f"scoring {clip.name}", None)))
    record = {"data": str(data), "cues": list(model.cues), "sigma": model.config.sigma, "fusion": model.config.fusion,
              **evaluate_results(model, results, labels, data)}
    for key, value in record.items():
        console.print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if json_out:
        atomic_write_bytes(json_out, json.dumps(record, indent=2).encode())
        console.print(f"metrics written to {json_out}")


def register(app: typer.Typer) -> None:
    app.add_typer(video_app, name="video")
