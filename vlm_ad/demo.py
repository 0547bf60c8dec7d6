"""The offline demos.

``run_product_demo`` shows the product where the method works: synthetic defects (scratch, hole, stain, crack) with
exact masks on a real brick texture (scikit-image's photograph), PatchCore fitted on 8 normal images, each test image
detected, measured and explained, one chat question answered, a batch report and a saved model written.

``run_textile_demo`` shows where it does not: the simulated textile benchmark (PyPI ``conformal-clip-data``), whose
global defects are texture-wide changes that local patch methods do not see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vlm_ad.detectors import create_detector
from vlm_ad.types import AnomalyMap


@dataclass
class DemoResult:
    """What the demo measured: one map per test image, their truth, the threshold, the wall time."""

    maps: list[AnomalyMap]
    labels: list[int]
    defect_types: list[str]
    threshold: float | None
    seconds: float
    out_dir: Path


def run_textile_demo(
    out_dir: Path,
    *,
    backbone: str = "dinov2-s14",
    layers: tuple[str, ...] | None = None,
    image_size: int = 448,
    shots: int = 16,
    per_class: int = 6,
    seed: int = 0,
    task: Callable[[str, int], Callable[[int], None]] | None = None,
) -> DemoResult:
    """Run the demo and write ``<out_dir>/<class>_<stem>.png`` overlays.

    Args:
        out_dir: folder for the overlays (created).
        backbone, layers, image_size: the feature extractor.
        shots: normal images to fit on.
        per_class: test images per class (normal, local defect, global defect).
        seed: seed of the image choice.
        task: ``task(description, total)`` returns a progress callback (the CLI passes rich progress bars).
    """
    from vlm_ad.data import TextileDataset
    from vlm_ad.viz import map_overlay, side_by_side

    t0 = time.perf_counter()
    train = TextileDataset("train", seed=seed)
    normal = [train[i] for i in train.sample_shots(shots, seed=seed)]
    test = TextileDataset("test", seed=seed, limit_test=3 * per_class)
    kw = {"layers": layers} if layers else {}
    det = create_detector("patchcore", backbone=backbone, image_size=image_size, coreset=1.0, **kw)
    det.fit(normal, progress=task("embedding normal images", len(normal)) if task else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    advance = task("scoring test images", len(test)) if task else None
    maps, labels, types = [], [], []
    for i in range(len(test)):
        s = test[i]
        amap = det.predict([s])[0]
        maps.append(amap)
        labels.append(int(s.label))
        types.append(str(s.defect_type))
        caption = f"{s.defect_type}: score {amap.score:.3f} ({'ANOMALY' if amap.label else 'normal'})"
        name = s.image_id.replace("/", "_").rsplit(".", 1)[0] + ".png"
        side_by_side(s.image, map_overlay(s.image, amap.map, amap.threshold), caption).save(out_dir / name)
        if advance:
            advance(1)
    return DemoResult(maps, labels, types, det.threshold_, time.perf_counter() - t0, out_dir)


@dataclass
class ProductDemo:
    """What the product demo did: per test image its truth and explained detection, the chat exchange, and where
    it wrote the model, the report and the data."""

    rows: list[tuple[str, str, object]]  # (image path, true defect type, Explained)
    question: str
    answer: str
    chat_image: Path
    model_dir: Path
    report_dir: Path
    data_dir: Path
    seconds: float


def run_product_demo(out_dir: Path, *, seed: int = 0,
                     task: Callable[[str, int], Callable[[int], None]] | None = None) -> ProductDemo:
    """Fit, detect, explain, chat and report on a synthetic brick category in ``out_dir`` (about a minute on 2 cores).

    Args:
        out_dir: folder for ``data/``, ``model/`` and ``report/`` (created).
        seed: seed of the generated defects and of the shots.
        task: ``task(description, total)`` returns a progress callback (the CLI passes rich progress bars).
    """
    from vlm_ad.chat import ChatSession
    from vlm_ad.data import generate_dataset, open_data, select_shots
    from vlm_ad.pipeline import Pipeline
    from vlm_ad.report import report_provenance, run_report

    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    cat = generate_dataset(out_dir / "data", sources=("brick",), n_train=8, n_test_good=2, n_test_per_type=1,
                           types=("scratch", "hole", "stain", "crack"), image_size=256, seed=seed)["brick"]
    train, test = open_data(cat)
    normal = select_shots(train, 8, seed)
    det = create_detector("patchcore", backbone="efficientnet-lite0", coreset=1.0, seed=seed)
    det.fit(normal, progress=task("fitting on 8 normal images", len(normal)) if task else None)
    model_dir = det.save(out_dir / "model")
    pipe = Pipeline(det, exemplar_root=cat)
    advance = task("detecting and explaining", len(test)) if task else None
    rows = []
    for i in range(len(test)):
        s = test[i]
        rows.append((str(s.path), str(s.defect_type), pipe.run(s)))
        if advance:
            advance(1)
    chat_path, explained = next(((Path(p), ex) for p, t, ex in rows if t != "good" and ex.evidence.regions),
                                (Path(rows[-1][0]), rows[-1][2]))
    question = "Where is the defect, how large is it, and how sure are you?"
    answer = ChatSession(explained, pipe.reasoner).ask(question)
    report_dir = out_dir / "report"
    run_report(cat / "test", pipe, report_dir, provenance=report_provenance(pipe, model_dir, "grounded"),
               restart=True)
    return ProductDemo(rows, question, answer, chat_path, model_dir, report_dir, cat, time.perf_counter() - t0)
