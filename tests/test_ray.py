"""--engine ray: the same records as the local engine, exactly once after a killed worker or a killed driver, on a
2-CPU local Ray cluster started here (tiny 64 px images, a small PatchCore model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlm_ad.errors import ConfigError, MissingDependencyError

pytest.importorskip("faiss")
ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
BAD = {"corrupt.png": "ImageReadError", "empty.png": "ImageReadError", "truncated.png": "ImageReadError"}


@pytest.fixture(scope="module")
def cluster():
    from vlm_ad.engines import start_local_cluster

    if ray.is_initialized():
        ray.shutdown()
    start_local_cluster(2, object_store_memory=100 * 2**20)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A PatchCore model on 64 px synthetic bricks and 24 images to report on: 18 good, 3 with defects, 3 bad."""
    from tests.conftest import build_tiny_model

    root = tmp_path_factory.mktemp("ray")
    cat, _ = build_tiny_model(root, n_test_good=4, n_test_per_type=3)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    files = sorted((cat / "test").rglob("*.png"))
    for i in range(21):  # same pixels under other names are other images (other ids, other keys)
        src = files[i % len(files)]
        (images / ("sub" if i % 5 == 0 else "") / f"{i:02d}_{src.parent.name}.png").write_bytes(src.read_bytes())
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "empty.png").write_bytes(b"")
    (images / "truncated.png").write_bytes(files[0].read_bytes()[:200])
    return root / "model", images


def _pipe(model_dir):
    from vlm_ad.detectors import load_detector
    from vlm_ad.pipeline import Pipeline
    from vlm_ad.report import report_provenance

    pipe = Pipeline(load_detector(model_dir))
    return pipe, report_provenance(pipe, model_dir, "grounded")


def _ray_engine(model_dir, **kw):
    from vlm_ad.engines import PipelineSpec, RayEngine

    return RayEngine(PipelineSpec(model_dir), workers=2, batch_size=2, **kw)


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "report.jsonl").read_text().splitlines() if x.strip()]


def _check_once(out: Path, images: Path) -> list[dict]:
    """Every image has exactly one record; only the bad files failed, each with its error."""
    lines = _lines(out)
    n = sum(1 for p in images.rglob("*") if p.is_file())
    assert len(lines) == n and len({r["key"] for r in lines}) == n
    failed = {r["image_id"]: r["error"] for r in lines if r["status"] == "failed"}
    assert failed.keys() == BAD.keys() and all(failed[k].startswith(v) and k in failed[k] for k, v in BAD.items())
    assert all((out / r["overlay"]).is_file() for r in lines if r["status"] == "ok")
    return lines


def test_engine_errors_say_how_to_fix_them(monkeypatch, model):
    from vlm_ad.engines import PipelineSpec, create_engine

    model_dir, _ = model
    pipe, _ = _pipe(model_dir)
    with pytest.raises(ConfigError, match="unknown engine 'spark'; choose one of local, ray"):
        create_engine("spark", pipe)
    with pytest.raises(ConfigError, match="--address is for --engine ray"):
        create_engine("local", pipe, address="10.0.0.1:6379")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"cannot reach a Ray cluster at --address 127.0.0.1:1 .*ray start --head"):
        create_engine("ray", pipe, PipelineSpec(model_dir), address="127.0.0.1:1")
    assert time.monotonic() - t0 < 10
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(MissingDependencyError, match=r"ray is needed for --engine ray; pip install 'vlm-ad\[scale\]'"):
        create_engine("ray", pipe, PipelineSpec(model_dir))


def test_cli_refuses_an_unreachable_address_before_writing_anything(model, tmp_path, monkeypatch, capsys):
    from vlm_ad.cli import main

    model_dir, images = model
    monkeypatch.setattr(sys, "argv", ["vlm-ad", "report", str(images), "--model", str(model_dir), "--out",
                                      str(tmp_path / "r"), "--engine", "ray", "--address", "127.0.0.1:1"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2  # a configuration error
    assert "cannot reach a Ray cluster at --address 127.0.0.1:1" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "r").exists()  # nothing written


def test_ray_gives_the_same_records_as_local(cluster, model, tmp_path):
    import torch

    from vlm_ad.engines import LocalEngine
    from vlm_ad.report import run_report

    model_dir, images = model
    pipe, prov = _pipe(model_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker: float sums then run in the same order, so bytes compare equal
    try:  # the same batches as the Ray engine's (batch_size=2): each batch one detector call on both
        local = run_report(images, pipe, tmp_path / "local", provenance=prov, engine=LocalEngine(pipe, batch_size=2))
    finally:
        torch.set_num_threads(threads)
    remote = run_report(images, pipe, tmp_path / "ray", provenance=prov, engine=_ray_engine(model_dir))
    assert (local.done, local.failed) == (remote.done, remote.failed) == (21, 3)
    _check_once(tmp_path / "ray", images)
    for name in ("report.jsonl", "report.md"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
    for png in (tmp_path / "local" / "overlays").iterdir():
        assert png.read_bytes() == (tmp_path / "ray" / "overlays" / png.name).read_bytes()
    again = run_report(images, pipe, tmp_path / "ray", provenance=prov, engine=_ray_engine(model_dir))
    assert (again.done, again.skipped, again.failed) == (0, 21, 3)  # resumed: only the failures are retried


@pytest.mark.parametrize("how", ["ray.kill", "SIGKILL"])
def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(cluster, model, tmp_path, how):
    from vlm_ad.report import run_report

    model_dir, images = model
    pipe, prov = _pipe(model_dir)
    engine, seen = _ray_engine(model_dir), []

    def kill_one(n: int) -> None:
        seen.append(n)
        if len(seen) == 4:  # mid-run: both workers hold batches
            victim = engine.actors[0]
            if how == "ray.kill":
                ray.kill(victim)
            else:
                os.kill(ray.get(victim.pid.remote()), signal.SIGKILL)

    res = run_report(images, pipe, tmp_path / "out", provenance=prov, engine=engine, progress=kill_one)
    assert engine.lost_batches >= 1  # the kill hit work in flight, which went to a new worker
    assert (res.done, res.failed) == (21, 3)
    _check_once(tmp_path / "out", images)


def test_an_image_that_kills_its_worker_fails_alone(cluster, model):
    from vlm_ad.data import ImageFolder
    from vlm_ad.engines import WorkItem, explain_item

    model_dir, images = model

    def task(pipeline, item):  # a nested function: Ray ships it by value to the workers
        if item.image_id == "03_good.png":
            os._exit(1)  # as a decoder crash or the OOM killer would
        return explain_item(pipeline, item)

    work = [WorkItem(it.image_id, str(it.path), str(i), str(i)) for i, it in enumerate(ImageFolder(images).items)]
    engine = _ray_engine(model_dir)
    try:
        results = list(engine.map(task, work[:10]))
    finally:
        engine.close()
    assert sorted(r.item.key for r in results) == sorted(w.key for w in work[:10])  # each once
    failed = {r.item.image_id: r.record["error"] for r in results if r.record["status"] == "failed"}
    assert list(failed) == ["03_good.png"] and "died 2 times" in failed["03_good.png"]
    assert engine.lost_batches >= 3  # twice in its batch, once alone (and any batch queued on the same worker)


DRIVER = """
import sys
from vlm_ad.detectors import load_detector
from vlm_ad.engines import PipelineSpec, RayEngine
from vlm_ad.pipeline import Pipeline
from vlm_ad.report import report_provenance, run_report
images, model_dir, out, address = sys.argv[1:5]
pipe = Pipeline(load_detector(model_dir))
engine = RayEngine(PipelineSpec(model_dir), address=address, workers=2, batch_size=1)
run_report(images, pipe, out, provenance=report_provenance(pipe, model_dir, "grounded"), engine=engine)
"""


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                         "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # ~20-30 s: a second Python process joins the cluster
def test_sigkill_of_the_driver_then_rerun_loses_and_duplicates_nothing(cluster, model, tmp_path):
    from vlm_ad.report import run_report

    model_dir, images = model
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(images), str(model_dir), str(out), cluster],
                            env=_env())
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "report.jsonl").is_file() and len((out / "report.jsonl").read_bytes().splitlines()) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the driver finished before it could be killed mid-run"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r["key"] for r in _lines(out) if r["status"] == "ok"}
    assert 3 <= len(before) < 21
    pipe, prov = _pipe(model_dir)
    res = run_report(images, pipe, out, provenance=prov, engine=_ray_engine(model_dir))
    assert res.skipped == len(before) and res.done + res.skipped == 21
    _check_once(out, images)


@pytest.mark.slow  # ~20-30 s: a second Python process joins the cluster
def test_cli_report_and_detect_join_a_cluster_by_address(cluster, model, tmp_path):
    model_dir, images = model
    run = [sys.executable, "-m", "vlm_ad.cli"]
    rep = subprocess.run([*run, "report", str(images), "--model", str(model_dir), "--out", str(tmp_path / "r"),
                          "--engine", "ray", "--address", cluster], env=_env(), capture_output=True, text=True)
    assert rep.returncode == 1, rep.stdout + rep.stderr  # 1: the three bad files failed, the rest was explained
    assert "21 explained, 0 already done, 3 failed" in " ".join(rep.stdout.split())
    _check_once(tmp_path / "r", images)
    det = subprocess.run([*run, "detect", str(images / "sub"), "--model", str(model_dir), "--out", str(tmp_path / "d"),
                          "--engine", "ray", "--address", cluster], env=_env(), capture_output=True, text=True)
    assert det.returncode == 0, det.stdout + det.stderr
    assert len(list((tmp_path / "d").glob("*_overlay.png"))) == len(list((images / "sub").iterdir())) == 5


def test_local_and_ray_detect_write_the_same_files(cluster, model, tmp_path):
    import torch

    from vlm_ad.detectors import load_detector
    from vlm_ad.engines import LocalEngine, PipelineSpec, RayEngine
    from vlm_ad.pipeline import Pipeline, detect_images

    model_dir, images = model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        det = load_detector(model_dir)  # the Ray engine's batches (3 images per detector call)
        local = detect_images([images], det, tmp_path / "local", engine=LocalEngine(Pipeline(det), batch_size=3))
    finally:
        torch.set_num_threads(threads)
    engine = RayEngine(PipelineSpec(model_dir), workers=2, batch_size=3)
    remote = detect_images([images], load_detector(model_dir), tmp_path / "ray", engine=engine)
    assert [(d.path, d.error is None) for d in local] == [(d.path, d.error is None) for d in remote]
    assert sum(d.error is not None for d in remote) == 3
    for f in (tmp_path / "local").iterdir():
        assert f.read_bytes() == (tmp_path / "ray" / f.name).read_bytes(), f.name
