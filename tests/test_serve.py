"""vlm-ad serve without a browser: the JSON API through FastAPI's TestClient, and the page's static files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("faiss")
pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny model, its category, a report folder made from its test images, and the app over them."""
    from fastapi.testclient import TestClient

    from tests.conftest import build_tiny_model
    from vlm_ad.detectors import load_detector
    from vlm_ad.pipeline import Pipeline
    from vlm_ad.report import report_provenance, run_report
    from vlm_ad.web import create_app

    root = tmp_path_factory.mktemp("serve")
    cat, model_dir = build_tiny_model(root, n_test_good=2, n_test_per_type=3)
    pipe = Pipeline(load_detector(model_dir), exemplar_root=cat)
    run_report(cat / "test", pipe, root / "report", provenance=report_provenance(pipe, model_dir, "grounded"))
    app = create_app(pipe, reports=root / "report", examples=cat / "test", max_upload_mb=1,
                     info={"model": str(model_dir), "reasoner": "grounded"})
    return TestClient(app), cat


def _png(path) -> bytes:
    return path.read_bytes()


def _hole(cat):
    return sorted((cat / "test" / "hole").glob("*.png"))[0]


def test_upload_gives_overlay_regions_exemplars_and_a_chat(served):
    client, cat = served
    resp = client.post("/api/analyze", files={"file": ("part.png", _png(_hole(cat)), "image/png")})
    assert resp.status_code == 200, resp.text
    res = resp.json()
    assert res["image_id"] == "part.png" and res["verdict"] in ("anomalous", "normal")
    assert res["overlay"].startswith("data:image/png;base64,") and res["image"] != res["overlay"]
    assert res["steps"] and all("evidence" in s for s in res["steps"]) and isinstance(res["flags"], list)
    assert res["verdict"] == "anomalous" and res["regions"], "the tiny model should find the hole"
    r1 = res["regions"][0]
    assert r1["id"] == "R1" and r1["picture"].startswith("data:image/png")
    assert r1["exemplar"]["id"] == "E1" and r1["exemplar"]["picture"].startswith("data:image/png")
    assert r1["exemplar"]["image_id"].startswith("train/")
    chat = client.post("/api/chat", json={"session": res["session"], "question": "where is the defect?"}).json()
    assert "R1" in chat["answer"] and r1["location"] in chat["answer"] and chat["turns"] == 1
    again = client.post("/api/chat", json={"session": res["session"], "question": "how sure are you?"}).json()
    assert again["turns"] == 2  # the conversation is kept per session


@pytest.mark.parametrize("name, data, status, words", [
    ("notes.txt", b"hello, not an image", 400, "not a recognised image format"),
    ("empty.png", b"", 400, "is empty"),
    ("cut.png", None, 400, "truncated"),
    ("big.png", b"\0" * 1_030_000, 413, "big.png is 1.0 MB, above this server's 1 MB upload limit"),  # read
    ("huge.png", b"\0" * 3_000_000, 413, "the upload is 3.0 MB, above"),  # refused from its Content-Length
])
def test_bad_uploads_give_a_clear_4xx_message(served, name, data, status, words):
    client, cat = served
    if data is None:  # a real PNG cut in half
        full = _png(_hole(cat))
        data = full[: len(full) // 2]
    resp = client.post("/api/analyze", files={"file": (name, data, "application/octet-stream")})
    assert resp.status_code == status
    err = resp.json()["error"]
    assert words in err and "Traceback" not in err and "/tmp" not in err


def test_too_many_pixels_is_refused_before_decoding(served, monkeypatch):
    client, _ = served
    buf = io.BytesIO()
    Image.new("1", (3000, 3000)).save(buf, format="PNG")  # 9 MP, a few KB on disk
    monkeypatch.setenv("VLM_AD_MAX_PIXELS", "1000000")
    resp = client.post("/api/analyze", files={"file": ("big.png", buf.getvalue(), "image/png")})
    assert resp.status_code == 413 and "3000 x 3000" in resp.json()["error"] and "big.png" in resp.json()["error"]


def test_examples_and_unknown_names(served):
    client, _ = served
    names = client.get("/api/info").json()["examples"]
    assert any(n.startswith("hole/") for n in names)
    res = client.post("/api/analyze/example", json={"name": names[0]}).json()
    assert res["image_id"] == names[0]
    bad = client.post("/api/analyze/example", json={"name": "../../etc/passwd"})
    assert bad.status_code == 404 and "not one of this server's examples" in bad.json()["error"]
    gone = client.post("/api/chat", json={"session": "nope", "question": "where?"})
    assert gone.status_code == 404 and "expired" in gone.json()["error"]
    assert client.post("/api/chat", json={"session": "x"}).status_code == 422  # no question: a JSON message


def test_report_tab_filters_sorts_and_opens_a_record(served):
    client, _ = served
    every = client.get("/api/report").json()
    assert every["total"] == 5 and len(every["rows"]) == 5 and every["provenance"]["reasoner"] == "grounded"
    scores = [r["score"] for r in every["rows"]]
    assert scores == sorted(scores, reverse=True)
    low = client.get("/api/report", params={"sort": "score_asc"}).json()["rows"]
    assert [r["score"] for r in low] == sorted(scores)
    anomalous = client.get("/api/report", params={"verdict": "anomalous"}).json()
    assert anomalous["rows"] and all(r["verdict"] == "anomalous" for r in anomalous["rows"])
    assert anomalous["matched"] == every["counts"]["anomalous"]
    page = client.get("/api/report", params={"limit": 2, "offset": 2}).json()["rows"]
    assert [r["index"] for r in page] == [r["index"] for r in every["rows"][2:4]]
    rec = client.get(f"/api/report/{anomalous['rows'][0]['index']}").json()
    assert rec["explanation"]["verdict"] == "anomalous" and rec["overlay_url"].startswith("/report/files/overlays/")
    png = client.get(rec["overlay_url"])
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert client.get("/report/files/../report.json").status_code == 404
    assert client.get("/report/files/report.jsonl").status_code == 404
    assert client.get("/api/report", params={"verdict": "maybe"}).status_code == 400
    assert client.get("/api/report/999").status_code == 404


def test_page_and_its_static_files_load_nothing_from_the_internet(served):
    client, _ = served
    page = client.get("/").text
    js, css = client.get("/static/app.js").text, client.get("/static/app.css").text
    assert 'id="overlay"' in page and 'id="chat-log"' in page and "function ask" in js and ".flags" in css
    for text in (page, js, css):
        assert "http://" not in text and "https://" not in text
    assert "innerHTML" not in js  # server data only ever goes in as text
    assert client.get("/static/../app.py").status_code == 404


def test_without_a_report_folder_the_report_api_says_how_to_open_one(served):
    from fastapi.testclient import TestClient

    from vlm_ad.web import create_app

    client, _ = served
    bare = TestClient(create_app(client.app.state.service.pipeline))
    resp = bare.get("/api/report")
    assert resp.status_code == 404 and "--reports DIR" in resp.json()["error"]


def test_views_exemplar_window_is_centred_on_the_hit():
    from vlm_ad.web.views import exemplar_window

    img = np.zeros((64, 64, 3), np.uint8)
    img[40:48, 8:16] = 255  # patch (row 5, col 1) of an 8 x 8 grid
    win = exemplar_window(img, 5, 1, (8, 8), (0.125, 0.125))
    assert win.shape[:2] == (24, 24) and (win[8:16, 8:16] == 255).all() and win.sum() == img.sum()  # centred
    assert exemplar_window(img, 0, 0, (8, 8), (0.5, 0.5)).shape[:2] == (28, 28)  # 4 +- 24, clipped at 0


def test_an_image_too_small_to_measure_is_refused_naming_it(served):
    client, _ = served
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    resp = client.post("/api/analyze", files={"file": ("dot.png", buf.getvalue(), "image/png")})
    assert resp.status_code in (400, 422), resp.text
    assert "dot.png" in resp.json()["error"] and "at least 8 pixels" in resp.json()["error"]


def test_a_server_failure_is_a_json_500_without_a_traceback(served):
    from fastapi.testclient import TestClient

    from vlm_ad.web import create_app

    client, _ = served
    app = create_app(client.app.state.service.pipeline, reports=Path("/nonexistent"))

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals at /srv/model")

    app.state.service.report.rows = broken
    resp = TestClient(app, raise_server_exceptions=False).get("/api/report")
    assert resp.status_code == 500
    assert resp.json() == {"error": "internal error (RuntimeError); the server log has the details"}


def test_sessions_are_dropped_by_count_and_by_pixels():
    from types import SimpleNamespace

    from vlm_ad.web.app import Sessions, WebError

    def session(side):
        return SimpleNamespace(explained=SimpleNamespace(image=np.zeros((side, side, 3), np.uint8)))

    s = Sessions(limit=3, max_pixels=10_000)
    ids = [s.add(session(10)) for _ in range(5)]
    assert len(s) == 3 and s.get(ids[-1])
    with pytest.raises(WebError, match="expired"):
        s.get(ids[0])
    big = s.add(session(99))  # 9,801 pixels: only one 100-pixel session still fits beside it
    assert len(s) == 2 and s.get(big)
    s.add(session(200))  # larger than the budget alone: kept, as the only one
    assert len(s) == 1


def test_the_page_runs_an_onnx_export_as_the_torch_model(served, tmp_path):
    """serve --runtime onnx: the same verdict and regions as the torch model behind `served`."""
    pytest.importorskip("onnxruntime", reason="pip install 'vlm-ad[export]'")
    pytest.importorskip("cv2", reason="pip install 'vlm-ad[export]'")
    from fastapi.testclient import TestClient

    from vlm_ad.export import export_model
    from vlm_ad.pipeline import Pipeline
    from vlm_ad.runtime import load_runtime_detector
    from vlm_ad.web import create_app

    client, cat = served
    model_dir = Path(client.app.state.service.info["model"])
    export_model(model_dir, tmp_path / "export", fmt="onnx")
    onnx = TestClient(create_app(Pipeline(load_runtime_detector(tmp_path / "export", "onnx"), exemplar_root=cat),
                                 info={"model": str(tmp_path / "export"), "runtime": "onnx"}))
    upload = {"file": ("part.png", _png(_hole(cat)), "image/png")}
    a, b = client.post("/api/analyze", files=upload).json(), onnx.post("/api/analyze", files=upload).json()
    assert b["verdict"] == a["verdict"] == "anomalous"
    assert [r["box"] for r in b["regions"]] == [r["box"] for r in a["regions"]]
