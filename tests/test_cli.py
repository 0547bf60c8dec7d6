"""The CLI end to end on a tiny generated MVTec-layout dataset (typer's test runner, real files)."""

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from vlm_ad.cli import app
from vlm_ad.data import generate_dataset

pytest.importorskip("faiss", reason="faiss-cpu (vlm-ad[retrieval]) is needed for the detectors")
runner = CliRunner()


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    cats = generate_dataset(root, sources=("brick",), n_train=4, n_test_good=2, n_test_per_type=1,
                            types=("hole", "stain"), image_size=96, seed=0)
    return cats["brick"]


def _ok(result):
    assert result.exit_code == 0, result.output
    return result.output


def _first_cells(table: str) -> dict[str, str]:
    """First cell -> whole row of a rich table's printed rows."""
    rows = [line.split("│")[1:-1] for line in table.splitlines() if line.startswith("│")]
    return {cells[0].strip(): "│".join(cells) for cells in rows if cells and cells[0].strip()}


def test_help_teaches():
    out = _ok(runner.invoke(app, ["--help"]))
    listed = {line.strip("│ ").split()[0] for line in out.splitlines() if line.startswith("│ ") and line.strip("│ ")}
    assert {"demo", "backbones", "detectors", "fit", "detect", "eval", "chat", "report", "adapt", "library",
            "video", "serve"} <= listed
    assert "--shots" in _ok(runner.invoke(app, ["eval", "--help"]))
    assert _ok(runner.invoke(app, ["--version"])).strip() == f"vlm-ad {__import__('vlm_ad').__version__}"


def test_detectors_lists_every_registered_name():
    from vlm_ad.detectors import list_detectors

    rows = _first_cells(_ok(runner.invoke(app, ["detectors"])))
    assert sorted(rows) == list_detectors()  # whole cells: "ae" is not found inside "feature-ae"


def test_detectors_name_lists_its_options_with_defaults_and_values():
    out = _ok(runner.invoke(app, ["detectors", "patchcore"]))
    rows = _first_cells(out)
    assert {"coreset", "pool", "pool_pad", "sigma", "rings", "geometry", "threshold_rule"} <= set(rows)
    assert "0.1" in rows["coreset"] and "4.0" in rows["sigma"] and "3" in rows["pool"]
    assert "'zero'" in rows["pool_pad"] and "sqrt" in rows["pool_pad"] and "backbone's default" in rows["geometry"]
    assert "pydoc vlm_ad.detectors.patchcore" in out
    bad = runner.invoke(app, ["detectors", "patchkore"])
    assert bad.exit_code != 0 and "registered: adapted" in str(bad.exception)
    clip = runner.invoke(app, ["detectors", "winclip"])  # cannot be built without CLIP weights: says where to look
    assert clip.exit_code != 0 and "pydoc vlm_ad.detectors.winclip" in str(clip.exception)


def test_backbones_lists_offline_status():
    rows = _first_cells(_ok(runner.invoke(app, ["backbones"])))
    assert rows["dinov2-s14"].rstrip().endswith("ready") and rows["efficientnet-lite0"].rstrip().endswith("ready")


def test_fit_detect_eval_round_trip(category, tmp_path):
    model = tmp_path / "model"
    out = _ok(runner.invoke(app, ["fit", str(category), "--shots", "3", "--out", str(model), "-o", "image_size=96"]))
    assert "fitted patchcore" in out and (model / "detector.json").is_file()
    assert "patchcore on efficientnet-lite0 (block4, block10), input area 96 px" in out  # what the model does
    # a corrupt file among the inputs is reported and skipped; the good images are still written
    images = tmp_path / "in"
    images.mkdir()
    for p in sorted((category / "test").rglob("*.png"))[:2]:
        (images / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = runner.invoke(app, ["detect", str(images), "--model", str(model), "--out", str(tmp_path / "det")])
    assert result.exit_code == 1, result.output  # 1 = some inputs failed; the others are still written
    assert "skipped" in result.output and "broken.png" in result.output
    assert "patchcore on efficientnet-lite0" in result.output
    assert re.search(r"wrote 2 results to \S+ in [0-9.]+ s \([0-9.]+ images/s, files written\); 1 skipped",
                     " ".join(result.output.split())), result.output  # the rate a user can compare runtimes by
    records = sorted((tmp_path / "det").glob("*.json"))
    assert len(records) == 2 and len(list((tmp_path / "det").glob("*_overlay.png"))) == 2
    rec = json.loads(records[0].read_text())
    assert {"score", "label", "threshold", "regions", "hits"} <= set(rec)
    assert rec["hits"] and rec["hits"][0]["image_id"].startswith("train/good/")
    assert not list((tmp_path / "det").glob(".*tmp"))  # nothing half-written
    res = tmp_path / "r.json"
    _ok(runner.invoke(app, ["eval", str(category), "--shots", "0", "--detector", "mutual", "--json", str(res),
                            "-o", "image_size=96", "--backbone", "efficientnet-lite0"]))
    metrics = json.loads(res.read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "pixel_ap", "f1_max", "fit_seconds", "images_per_second",
                "peak_rss_mb"):
        assert key in metrics
    assert metrics["shots"] == 0 and 0 <= metrics["pixel_auroc"] <= 1


def test_backbone_when_none_is_given_is_the_detectors_measured_default(tmp_path):
    from vlm_ad.cli.images import _backbone

    assert _backbone(None, None, "patchcore") == "efficientnet-lite0"
    assert _backbone(None, None, "mutual") == "dinov2-s14"  # beat efficientnet-lite0 on the dev suite
    assert _backbone("efficientnet-lite0", None, "mutual") == "efficientnet-lite0"  # as given
    assert _backbone(None, tmp_path, "adapted") is None  # the adapter's own
    assert _backbone(None, None, "adapted") == "dinov2-s14"  # without an adapter: its only backbone
    assert _backbone(None, None, "ensemble") == "efficientnet-lite0+dinov2-s14"


def test_fit_and_detect_with_the_two_backbone_ensemble(category, tmp_path):
    model = tmp_path / "model"
    out = _ok(runner.invoke(app, ["fit", str(category), "--detector", "ensemble", "--shots", "3", "--out", str(model),
                                  "-o", "image_size=112"]))
    assert "fitted ensemble (efficientnet-lite0+dinov2-s14)" in out
    assert (model / "member-0" / "detector.json").is_file() and (model / "member-1" / "detector.json").is_file()
    image = sorted((category / "test").rglob("*.png"))[0]
    out = _ok(runner.invoke(app, ["detect", str(image), "--model", str(model), "--out", str(tmp_path / "det")]))
    said = " ".join(out.split())
    assert "ensemble: the mean of the scaled maps of patchcore on efficientnet-lite0" in said
    assert "; patchcore on dinov2-s14" in said
    rec = json.loads(next((tmp_path / "det").glob("*.json")).read_text())
    assert rec["threshold"] is not None and rec["hits"][0]["image_id"].startswith("train/good/")


def test_fit_takes_a_plain_folder_of_normal_images_or_train_good_without_a_test_split(category, tmp_path,
                                                                                     monkeypatch):
    import shutil

    from vlm_ad.data.base import ImageDataset

    plain = tmp_path / "good_parts"
    shutil.copytree(category / "train" / "good", plain)
    (plain / "notes.txt").write_text("not an image")  # ignored: not an image file name
    reads = []
    load = ImageDataset.load
    monkeypatch.setattr(ImageDataset, "load", lambda self, item: reads.append(item.path) or load(self, item))
    out = _ok(runner.invoke(app, ["fit", str(plain), "--out", str(tmp_path / "m1"), "-o", "image_size=96"]))
    assert "all taken as normal" in out and "fitting on all 4 of 4" in out
    assert len(reads) == 4  # each image read once (counting the shots reads none)
    assert (tmp_path / "m1" / "detector.json").is_file()
    only_train = tmp_path / "only_train"
    shutil.copytree(category / "train", only_train / "train")  # an MVTec layout with no test/ yet
    out = _ok(runner.invoke(app, ["fit", str(only_train), "--shots", "2", "--out", str(tmp_path / "m2"),
                                  "-o", "image_size=96"]))
    assert "fitting on 2 of 4" in out and (tmp_path / "m2" / "detector.json").is_file()
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["fit", str(tmp_path / "empty"), "--out", str(tmp_path / "m3")])
    assert result.exit_code != 0 and "MVTec AD layout" in str(result.exception)
    assert not (tmp_path / "m3").exists()
    good = sorted(plain.glob("*.png"))
    good[0].write_bytes(b"\x89PNG\r\n\x1a\nnot a png")  # two broken normal images: both named in one error
    good[1].write_bytes(good[2].read_bytes()[:60])
    result = runner.invoke(app, ["fit", str(plain), "--out", str(tmp_path / "m4"), "-o", "image_size=96"])
    message = str(result.exception)
    assert result.exit_code != 0 and "2 of the 4 normal images to fit on cannot be read" in message
    assert good[0].name in message and good[1].name in message and good[2].name not in message
    assert not (tmp_path / "m4").exists()


def test_clear_errors(tmp_path):
    result = runner.invoke(app, ["fit", str(tmp_path / "nope"), "--out", str(tmp_path / "m")])
    assert result.exit_code != 0 and "does not exist" in str(result.exception)
    result = runner.invoke(app, ["detect", str(tmp_path), "--model", str(tmp_path / "nomodel"), "--out", str(tmp_path)])
    assert "not a saved model" in str(result.exception)
    result = runner.invoke(app, ["fit", "textile", "--out", str(tmp_path / "m"), "-o", "coreset"])
    assert "KEY=VALUE" in str(result.exception)
    result = runner.invoke(app, ["serve", "--model", str(tmp_path), "--reports", str(tmp_path / "none")])
    assert f"--reports {tmp_path / 'none'} is not a folder" in str(result.exception)


def test_detect_writes_regions_for_a_planted_defect(category, tmp_path):
    from vlm_ad.data import MVTecDataset
    from vlm_ad.detectors import create_detector
    from vlm_ad.pipeline import write_detection

    train, test = MVTecDataset(category, "train"), MVTecDataset(category, "test")
    det = create_detector("patchcore", image_size=96).fit([train[i] for i in range(len(train))])
    sample = next(test[i] for i in range(len(test)) if test[i].label == 1)
    amap = det.predict([sample])[0]
    rec = write_detection(amap, sample.image, tmp_path, "x", region_threshold=float(np.quantile(amap.map, 0.98)))
    assert rec["regions"] and rec["regions"][0]["id"] == 1
    x0, y0, x1, y1 = rec["regions"][0]["box"]
    assert sample.mask[y0:y1, x0:x1].any()  # the strongest region overlaps the true defect


def test_eval_names_unusable_masks_before_fitting_and_says_what_it_skipped(category, tmp_path):
    import shutil

    from PIL import Image

    data = tmp_path / "cat"
    shutil.copytree(category, data)
    masks = sorted((data / "ground_truth").rglob("*.png"))
    masks[0].unlink()  # one missing
    Image.new("L", (10, 10)).save(masks[1])  # one of the wrong size
    res = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", str(data), "--shots", "2", "--json", str(res), "-o", "image_size=96"])
    out = _ok(result)
    assert out.count("mask problem") == 2 and "no mask file" in out and "is 10 x 10" in out
    assert out.index("mask problem") < out.index("image_auroc")
    metrics = json.loads(res.read_text())
    assert metrics["pixel_metrics"].startswith("skipped: 2 of") and "pixel_auroc" not in metrics
    assert 0 <= metrics["image_auroc"] <= 1


def test_demo_shows_the_product_and_points_at_serve(tmp_path):
    """`vlm-ad demo` (the README's first command): verdicts with explanations, one chat answer, a saved model that
    loads, a report, and the next commands starting with serve."""
    pytest.importorskip("faiss")
    from vlm_ad.detectors import load_detector

    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out)], terminal_width=200)
    assert res.exit_code == 0, res.output
    right, total = (int(x) for x in re.search(r"(\d+) of (\d+) verdicts right", res.output).groups())
    assert total >= 4 and right >= total - 1, res.output  # mostly right on the images it picks
    assert "Q (" in res.output and "A: " in res.output and "R1" in res.output
    assert (out / "report" / "report.html").is_file() and (out / "report" / "report.jsonl").is_file()
    assert load_detector(out / "model").threshold_ is not None
    nxt = res.output[res.output.index("Next:"):]
    assert nxt.split()[1:3] == ["vlm-ad", "serve"] and "--model" in nxt
