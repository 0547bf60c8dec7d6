"""Video: synthetic clips (a square at normal speed, a fast one, one moving against the flow) through the cues,
events and explanations, frame-folder and PyAV input with corrupt data, the CLI, and the real UCSD Ped2 data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_ad.errors import ConfigError, UnknownNameError
from vlm_ad.video import VideoModel, create_cue, list_cues, open_clips

PED2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ucsd_ped2"
H, W = 96, 128
FAST = range(40, 60)  # frames of the test clip with the fast square


def _frames(n: int, *, speed: float = 1.5, fast: range = range(0), fast_speed: float = 6.0, backwards: range = range(0),
            seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    bg = (rng.integers(70, 110, size=(H, W))).astype(np.float32)
    out, x = [], 5.0
    for t in range(n):
        x += -speed if t in backwards else fast_speed if t in fast else speed
        x = x % (W - 14)
        im = bg + rng.normal(0, 2, size=(H, W))
        im[50:62, int(x): int(x) + 12] = 220
        out.append(np.clip(im, 0, 255).astype(np.uint8))
    return out


def _write_clip(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).convert("RGB").save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toyvideo")
    for k in range(4):
        _write_clip(root / "train" / f"Train{k:03d}", _frames(50, seed=k))
    _write_clip(root / "test" / "Test001", _frames(80, fast=FAST, seed=9))
    rows = ["clip,frame,anomalous"] + [f"Test001,{i},{int(i in FAST)}" for i in range(80)]
    (root / "frame_labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def fitted(toy: Path) -> VideoModel:
    return VideoModel(cues=["motion", "objects"]).fit(open_clips(toy, "train"))


def test_cue_registry():
    assert list_cues() == ["appearance", "flow", "motion", "objects"]
    assert create_cue("motion").name == "motion"
    with pytest.raises(UnknownNameError, match="Valid names: appearance, flow, motion, objects"):
        create_cue("motoin")
    with pytest.raises(ConfigError, match="allowed: appearance, flow, motion, objects"):
        VideoModel(cues=["sound"])
    with pytest.raises(ConfigError, match="fusion must be 'max' or 'mean'"):
        VideoModel(fusion="sum")


def test_fast_square_becomes_an_explained_event(toy: Path, fitted: VideoModel):
    res = fitted.score_clip(open_clips(toy, "test")[0])
    assert len(res.frames) == 80 and len(res.events) >= 1
    ev = max(res.events, key=lambda e: e.peak_score)
    assert FAST.start - 5 <= ev.peak <= FAST.stop + 5
    assert ev.start <= FAST.stop and ev.end >= FAST.start
    normal = [i for i in range(5, 80) if i not in range(FAST.start - 8, FAST.stop + 8)]
    assert res.normed["motion"][list(FAST)].mean() > res.normed["motion"][normal].mean() + 1
    assert res.normed["objects"][list(FAST)].mean() > res.normed["objects"][normal].mean() + 1
    text = ev.explanation.summary
    assert ev.explanation.verdict == "anomalous" and f"Frames {ev.start}-{ev.end}" in text
    assert any("px/frame" in s.text and "O1" in s.evidence for s in ev.explanation.steps)
    # the fast square has a normal square's size: named rider-like, in the object step and the summary
    assert any("rider-like" in s.text for s in ev.explanation.steps) and "rider-like" in text
    assert any("move at" in r for r in ev.rules)
    box = ev.track[ev.peak - ev.start]["box"]
    assert box[1] <= 62 and box[3] >= 50  # the cited region holds the square's rows


def test_against_the_flow_breaks_the_direction_rule(toy: Path, fitted: VideoModel, tmp_path: Path):
    clip = open_clips(_write_clip(tmp_path / "Back", _frames(60, backwards=range(30, 45), seed=5)))[0]
    res = fitted.score_clip(clip)
    objs = [o for d in res.details[32:45] for o in d["objects"]["objects"]]
    assert any("heading left" in b for o in objs for b in o["broken"])
    assert res.raw["motion"][32:45].mean() > res.raw["motion"][5:25].mean()


def test_save_load_round_trip(toy: Path, fitted: VideoModel, tmp_path: Path):
    fitted.save(tmp_path / "m")
    loaded = VideoModel.load(tmp_path / "m")
    clip = open_clips(toy, "test")[0]
    a, b = fitted.score_clip(clip), loaded.score_clip(clip)
    np.testing.assert_allclose(a.smoothed, b.smoothed, atol=1e-5)
    assert loaded.cues["objects"].rules_text() == fitted.cues["objects"].rules_text()
    meta_path = tmp_path / "m" / "video_model.json"
    meta = json.loads(meta_path.read_text())
    assert meta["kind"] == "video-model" and meta["format_version"] == 2
    del meta["format_version"]  # a folder from before calibration (format 1)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="old format version 1 .* refit it with 'vlm-ad video fit'"):
        VideoModel.load(tmp_path / "m")


def test_a_saved_model_recalibrates_with_other_smoothing_and_fusion(toy: Path, fitted: VideoModel, tmp_path: Path):
    fitted.save(tmp_path / "m")
    loaded = VideoModel.load(tmp_path / "m")
    assert len(loaded.calibration_raw_) == len(fitted.calibration_raw_) > 0
    fusion = "mean" if fitted.config.fusion == "max" else "max"
    loaded.recalibrated(sigma=1.0, fusion=fusion)
    assert (loaded.config.sigma, loaded.config.fusion) == (1.0, fusion)
    fresh = VideoModel(cues=list(fitted.cues), sigma=1.0, fusion=fusion)
    fresh.cues = fitted.cues
    fresh.calibrate(fitted.calibration_raw_)
    assert loaded.threshold_ == pytest.approx(fresh.threshold_)
    clip = open_clips(toy, "test")[0]
    np.testing.assert_allclose(loaded.score_clip(clip).smoothed, fresh.score_clip(clip).smoothed, atol=1e-5)
    with pytest.raises(ConfigError, match="fusion must be"):
        loaded.recalibrated(fusion="sum")
    loaded.calibration_raw_ = []
    with pytest.raises(ConfigError, match="refit it with 'vlm-ad video fit'"):
        loaded.recalibrated(sigma=2.0)


def test_corrupt_frame_is_reported_and_skipped(fitted: VideoModel, tmp_path: Path):
    folder = _write_clip(tmp_path / "Broken", _frames(20, seed=3))
    (folder / "007.png").write_bytes(b"not a png")
    clip = open_clips(folder)[0]
    res = fitted.score_clip(clip)
    assert 7 not in res.frames.tolist() and len(res.frames) == 19
    assert any("007.png" in p and "skipped" in p for p in res.problems)


def _write_video(path: Path, frames: list[np.ndarray]) -> Path:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.stack([f] * 3, -1), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_video_file_round_trip_and_truncation(fitted: VideoModel, tmp_path: Path):
    path = _write_video(tmp_path / "clip.avi", _frames(30, seed=4))
    clip = open_clips(path)[0]
    frames = list(clip.frames())
    assert len(frames) == 30 and frames[0].image.shape == (H, W, 3)
    assert fitted.score_clip(clip).frames.tolist() == list(range(30))
    cut = tmp_path / "cut.avi"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    part = list(open_clips(cut)[0].frames())
    assert len(part) < 30
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 100)
    clip = open_clips(junk)[0]
    assert list(clip.frames()) == [] and "unreadable video" in clip.problems[0]


@pytest.mark.slow  # loads EfficientNet-Lite0: ~15 s on an idle 2-core machine
def test_appearance_cue_reuses_patchcore(toy: Path):
    opts = {"image_size": 64, "sample_every": 25, "stride": 20}  # few backbone calls: the CPUs are shared
    model = VideoModel(cues=["appearance"], cue_options={"appearance": opts})
    model.fit(open_clips(toy, "train")[:2])
    res = model.score_clip(open_clips(toy, "test")[0])
    assert type(model.cues["appearance"].detector_).__name__ == "PatchCore"
    assert res.maps.shape == (80, H // 16, W // 16) and np.isfinite(res.smoothed).all()


def test_cli_fit_detect_eval(toy: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from vlm_ad.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["video", "fit", str(toy), "--out", str(tmp_path / "m"), "--cues", "motion,objects"])
    assert r.exit_code == 0, r.output
    assert "rule: objects" in r.output
    r = runner.invoke(app, ["video", "detect", "--model", str(tmp_path / "m"), str(toy / "test"), "--out",
                            str(tmp_path / "o"), "--gif-stride", "4"])
    assert r.exit_code == 0, r.output
    events = json.loads((tmp_path / "o" / "events.json").read_text())["events"]
    assert events and events[0]["explanation"]["verdict"] == "anomalous"
    assert (tmp_path / "o" / "Test001.gif").stat().st_size > 0
    assert (tmp_path / "o" / "Test001_scores.csv").read_text().startswith("frame,score,fused")
    # an LLM that cannot be loaded: a clear error, or the grounded chain with the reason flagged when asked for
    missing = str(tmp_path / "no.gguf")
    r = runner.invoke(app, ["video", "detect", "--model", str(tmp_path / "m"), str(toy / "test"), "--out",
                            str(tmp_path / "o2"), "--no-gif", "--reasoner", "llamacpp", "--llm", missing])
    assert r.exit_code != 0 and not (tmp_path / "o2" / "events.json").exists()
    r = runner.invoke(app, ["video", "detect", "--model", str(tmp_path / "m"), str(toy / "test"), "--out",
                            str(tmp_path / "o2"), "--no-gif", "--reasoner", "llamacpp", "--llm", missing,
                            "--fallback", "grounded"])
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "o2" / "events.json").read_text())["events"][0]["explanation"]
    assert ev["reasoner"] == "grounded" and any("fallback to grounded" in f for f in ev["flags"])
    r = runner.invoke(app, ["video", "eval", str(toy), "--model", str(tmp_path / "m"), "--json",
                            str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["frame_auroc_micro"] > 0.8 and rec["pixel_auroc"] is None
    # smoothing and fusion of a saved model change without refitting; the help teaches what they do
    r = runner.invoke(app, ["video", "eval", str(toy), "--model", str(tmp_path / "m"), "--json",
                            str(tmp_path / "r2.json"), "--sigma", "2", "--fusion", "mean"])
    assert r.exit_code == 0 and "recalibrated" in r.output, r.output
    rec = json.loads((tmp_path / "r2.json").read_text())
    assert (rec["sigma"], rec["fusion"]) == (2.0, "mean") and rec["frame_auroc_micro"] > 0.8
    r = runner.invoke(app, ["video", "detect", "--model", str(tmp_path / "m"), str(toy / "test"), "--out",
                            str(tmp_path / "o3"), "--no-gif", "--fusion", "sum"])
    assert r.exit_code != 0 and "fusion must be" in str(r.exception)
    r = runner.invoke(app, ["video", "detect", "--help"])
    text = " ".join(r.output.replace("│", " ").split())  # rich wraps the help inside a box
    assert "one normal frame in 100" in text and "--sigma" in text


@pytest.mark.realdata
def test_ped2_layout_reads():
    if not PED2.exists():
        pytest.skip(f"UCSD Ped2 not found at {PED2} (the shared data folder is absent on this machine)")
    from vlm_ad.video import load_frame_labels, load_mask

    clips = open_clips(PED2, "train")
    assert len(clips) == 16
    first = next(iter(clips[0].frames()))
    assert first.image.shape == (240, 360, 3)
    labels = load_frame_labels(PED2 / "frame_labels.csv")
    assert sum(labels["Test001"].values()) > 0 and load_mask(PED2, "Test001", 100).shape == (240, 360)


def test_object_kind_words():
    from vlm_ad.video.cues import object_kind

    assert object_kind(0.8, 3.0).startswith("a rider-like object")
    assert object_kind(2.0, 2.0).startswith("a vehicle-like object")
    assert object_kind(2.0, 0.9).startswith("a large object at normal speed")
    assert object_kind(1.2, 1.3).startswith("an object like the normal ones")
    assert object_kind(0.5, None).startswith("an object like the normal ones")  # speed unknown: not called fast


def _event_reply(messages) -> str:
    """A scripted LLM: reads the event evidence JSON from the prompt and quotes it correctly."""
    import json as _json

    text = messages[1].content
    ev = _json.loads(text[text.index("{"): text.index("\n\nReply with")])
    s, r1 = ev["S"], ev["R1"]
    return _json.dumps({
        "verdict": "anomalous", "confidence": 0.9, "defect_type": "fast object", "location": r1["location"],
        "cited_regions": ["R1"],
        "steps": [{"text": f"Frames {s['first_frame']}-{s['last_frame']} peak at {s['peak_score']}, above the "
                           f"threshold {s['threshold']}.", "evidence": ["S"]},
                  {"text": f"The leading cue is {ev['cues']['C1']['cue']}.", "evidence": ["C1"]}],
        "summary": f"Something fast in the {r1['location']} (R1)."})


def test_events_explained_by_an_llm_reasoner(toy: Path, fitted: VideoModel):
    from vlm_ad.reasoning import create_reasoner
    from vlm_ad.testing import scripted_chat_model
    from vlm_ad.video.evidence import EventEvidence

    clip = open_clips(toy, "test")[0]
    fake = scripted_chat_model([_event_reply])
    res = fitted.score_clip(clip, reasoner=create_reasoner("chat", chat_model=fake, label="fake-llm"))
    ev = max(res.events, key=lambda e: e.peak_score)
    assert ev.explanation.reasoner == "fake-llm" and ev.explanation.flags == []
    assert "explains why a stretch of frames" in fake.calls[0][0].content  # the event prompt, not the image one
    evidence = EventEvidence(ev, res.frame_shape)
    assert {"S", "R1", "C1", "O1"} <= evidence.ids and ev.peak_score in evidence.numbers()
    # the grounded reasoner explains event evidence with the event chain
    from vlm_ad.video.events import explain_event

    grounded = create_reasoner("grounded").explain(evidence)
    assert grounded.summary == explain_event(ev, res.frame_shape).summary and grounded.steps[0].evidence == ["S"]
    # an LLM citing a region and a frame that do not exist is rejected; the grounded explanation stays, flagged
    liar = scripted_chat_model([_event_reply(fake.calls[0]).replace('"R1"]', '"R7"]').replace(
        "Frames ", "Frames 999 and ")])
    res = fitted.score_clip(clip, reasoner=create_reasoner("chat", chat_model=liar, label="liar", max_retries=1))
    ev = max(res.events, key=lambda e: e.peak_score)
    assert ev.explanation.reasoner == "grounded" and any("liar gave no valid explanation" in f
                                                         for f in ev.explanation.flags)
    assert len(liar.calls) == 2 * len(res.events)  # one retry per event


def _contexts(frames: list[np.ndarray], grid: tuple[int, int] = (H // 16, W // 16)):
    from vlm_ad.video import FrameContext

    prev = None
    for i, f in enumerate(frames):
        yield FrameContext(i, np.stack([f] * 3, -1), f, 1.0, grid, prev)
        prev = f


def _fit_cue(cue, clips: list[list[np.ndarray]]):
    for frames in clips:
        cue.reset()
        for ctx in _contexts(frames):
            cue.observe(ctx)
    return cue.finish_fit()


def test_flow_baseline_on_moving_squares():
    from vlm_ad.video.cues import moving_average

    cue = _fit_cue(create_cue("flow"), [_frames(50, seed=k) for k in range(3)])
    assert 1.0 < cue.limit_ < 4.0  # the normal square moves 1.5 px/frame
    raw = np.array([cue.step(ctx).score for ctx in _contexts(_frames(80, fast=FAST, seed=9))])
    smooth = moving_average(raw, 15)
    normal = [i for i in range(5, 80) if i not in range(FAST.start - 8, FAST.stop + 8)]
    assert raw[list(FAST)].mean() > 2.0 and raw[normal].max() < 1.5
    assert smooth[50] > smooth[normal].max() and len(smooth) == len(raw)
    assert moving_average(np.array([0.0, 0, 3, 0, 0]), 3)[1:4].tolist() == [1.0, 1.0, 1.0]


def test_motion_limits_shrink_to_the_whole_frame_where_traffic_was_thin():
    from vlm_ad.video.cues import _SPEED_EDGES

    def fitted(prior: float) -> np.ndarray:
        cue = create_cue("motion", prior=prior)
        hist = np.zeros((6, 6, len(_SPEED_EDGES) - 1))
        at = lambda v: int(np.searchsorted(_SPEED_EDGES, v, side="right") - 1)  # noqa: E731
        hist[:, :2, at(1.6)] = 300  # a busy walkway: walkers at 1.6 px/frame
        hist[0, 0, at(3.2)] = 5000  # one cell with plenty of its own, faster traffic
        hist[3:, 3:, at(0.6)] = 3  # a corner that saw three slow moves each
        cue._speed_hist, cue._dir_hist = hist, np.zeros((6, 6, 8))
        return cue.finish_fit().max_speed_

    shrunk, own = fitted(200.0), fitted(1e-6)
    assert own[5, 5] == pytest.approx(1.0)  # its own three samples (floored at 2 x moving): a walker is 1.6x that
    assert shrunk[5, 5] >= 1.6  # shrunk to the whole frame: a walker there is normal
    assert shrunk[0, 0] >= 3.2 and own[0, 0] >= 3.2  # plenty of own traffic keeps its own limit


def test_calibration_gives_false_alarm_rates():
    from vlm_ad.video.calibration import TailCalibration

    normal = np.random.default_rng(0).normal(size=20000)
    cal = TailCalibration.fit(normal)
    assert cal.false_alarm_rate(np.quantile(normal, [0.5, 0.99])) == pytest.approx([0.5, 0.01], abs=0.003)
    far = cal.false_alarm_rate(np.array([-10.0, 3.0, 5.0, 8.0, 50.0]))
    assert far[0] == 1.0 and far[1] > far[2] > far[3] > far[4] > 0  # beyond the data: still ordered
    # the exponential tail is conservative for a light (Gaussian) tail: 1 in 1000 reads as about 1 in 500
    assert 2.4 < cal.surprise(np.array([np.quantile(normal, 0.999)]))[0] <= 3.1
    assert TailCalibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal


@pytest.mark.parametrize("fusion", ["max", "mean"])
def test_fusion_is_not_dragged_below_the_best_cue(fusion: str):
    from vlm_ad.evaluation.detection import image_auroc

    rng = np.random.default_rng(1)
    cal = [{"motion": rng.normal(size=300), "flow": 100 * rng.standard_t(2, size=300)} for _ in range(3)]
    y = np.zeros(600, int)
    y[200:260] = y[400:430] = 1
    good = rng.normal(size=600) + 4 * y  # informative
    bad = 100 * rng.standard_t(2, size=600)  # heavy-tailed, on another scale, unrelated to the anomalies
    best = image_auroc(y, good)
    m = VideoModel(cues=["motion", "flow"], sigma=0, fusion=fusion).calibrate(cal)
    normed, fused = m.fuse({"motion": good, "flow": bad})
    assert image_auroc(y, normed["motion"]) == pytest.approx(best)  # calibration keeps each cue's order
    assert image_auroc(y, fused) >= best - 0.005
    # the former rule, a mean of scores scaled by their normal median and 99th percentile, loses more
    z = {c: (lambda v: ((x - np.median(v)) / (np.quantile(v, 0.99) - np.median(v))))(
        np.concatenate([r[c] for r in cal])) for c, x in (("motion", good), ("flow", bad))}
    assert image_auroc(y, (z["motion"] + z["flow"]) / 2) < image_auroc(y, fused) - 0.005
    # the fused score is calibrated: about 1 in 100 normal calibration frames exceeds 2.0
    calfused = np.concatenate([m.fuse(r)[1] for r in cal])
    assert (calfused > 2.0).mean() == pytest.approx(0.01, abs=0.006) and m.threshold_ > 2.0


def test_objects_size_only_names_a_merged_crowd_by_default():
    cue = create_cue("objects")
    cue.rules_ = {"all": {"speed": [0.2, 2.0], "size": [40.0, 400.0], "directions": [], "samples": 100,
                          "dwell_max": 0}}
    crowd = {"zone": "centre", "size": 2000.0, "speed": 1.5, "direction": None, "dwell": 10}
    rider = {"zone": "centre", "size": 300.0, "speed": 5.0, "direction": None, "dwell": 10}
    score, broken = cue._judge(dict(crowd))
    assert score < 1.0 and any("size 2000 px" in b for b in broken)  # cited, not scored
    # the rule is quoted: which quantile, how many normal objects, and that size does not score
    assert "size rule: the 99th percentile of 100 normal objects anywhere; size names the object" in broken[0]
    assert cue._judge(dict(rider))[0] == pytest.approx(2.5)
    score, broken = cue._judge(dict(crowd, speed=5.0))  # a large, fast blob: the speed that scored comes first
    assert broken[0].startswith("speed 5.00 px/frame is 2.5x 2.00 px/frame (speed rule") and "size" in broken[1]
    cue.cfg["size_weight"] = 1.0
    assert cue._judge(dict(crowd))[0] == pytest.approx(5.0)
