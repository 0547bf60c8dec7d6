"""Models that see the image: image parts, structured output and refusals over a real (fake) OpenAI server."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from vlm_ad.errors import BackendUnavailableError
from vlm_ad.pipeline import Pipeline
from vlm_ad.reasoning import create_reasoner
from vlm_ad.reasoning.schema import reply_schema
from vlm_ad.testing import serve_openai_compatible
from vlm_ad.types import AnomalyMap, ExemplarHit
from vlm_ad.viz import png_bytes

pytest.importorskip("openai")


class _Grid:
    """What the pipeline needs of a detector to crop the exemplar patch: its feature grid."""

    grid_shape = (8, 8)


def _scene(tmp_path):
    """A dark square on texture, its map (threshold 0.5) and a normal exemplar image on disk."""
    rng = np.random.default_rng(0)
    image = rng.integers(120, 160, (64, 64, 3), dtype=np.uint8)
    image[20:32, 8:20] = 30
    amap = np.full((64, 64), 0.1, np.float32)
    amap[18:34, 6:22] = 0.9
    (tmp_path / "train").mkdir()
    (tmp_path / "train/000.png").write_bytes(png_bytes(np.full((64, 64, 3), 140, np.uint8)))
    return image, AnomalyMap("test/000.png", 0.9, amap, hits=[ExemplarHit("train/000.png", 3, 2, 0.75)],
                             threshold=0.5)


def _valid(body) -> str:
    """A grounded reply built from the evidence the request carries."""
    text = next(p["text"] for p in _parts(body["messages"][1]) if p["type"] == "text" and "<evidence>" in p["text"])
    ev = json.loads(text.split("<evidence>")[1].split("</evidence>")[0])
    r = ev["regions"][0]
    return json.dumps({"verdict": "anomalous", "confidence": 0.9, "defect_type": None, "location": r["location"],
                       "cited_regions": ["R1"], "steps": [{"text": "R1 is darker than E1.", "evidence": ["R1", "E1"]}],
                       "summary": f"A dark region in the {r['location']} (R1)."})


def _parts(message) -> list[dict]:
    c = message["content"]
    return c if isinstance(c, list) else [{"type": "text", "text": c}]


def _images(message) -> list[np.ndarray]:
    urls = [p["image_url"]["url"] for p in _parts(message) if p["type"] == "image_url"]
    assert all(u.startswith("data:image/png;base64,") for u in urls)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1])))) for u in urls]


def test_image_overlay_and_exemplar_arrive_as_image_parts_with_the_schema(tmp_path):
    from vlm_ad.chat import ChatSession

    image, amap = _scene(tmp_path)
    url, received, stop = serve_openai_compatible(
        lambda body: _valid(body) if "response_format" in body else "R1 is in the centre left.")
    try:
        reasoner = create_reasoner("openai", base_url=url, model="vlm", images=True)
        ex = Pipeline(_Grid(), reasoner, exemplar_root=tmp_path).explain_map(amap, image)
        answer = ChatSession(ex, reasoner).ask("where is it?")
    finally:
        stop()
    assert ex.explanation.reasoner == "openai" and ex.explanation.flags == [] and answer == "R1 is in the centre left."
    first = received[0]["messages"][1]
    shown, overlay, exemplar = _images(first)
    assert np.array_equal(shown, image)  # the image itself, losslessly
    assert overlay.shape == image.shape and not np.array_equal(overlay, image)  # the map and the R1 box over it
    assert exemplar.shape[0] < 64 and (exemplar == 140).all()  # the exemplar's patch around E1's cell
    assert "the nearest normal exemplar patch" in _parts(first)[0]["text"]
    fmt = received[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == reply_schema(ex.evidence)
    assert len(_images(received[1]["messages"][1])) == 3 and "response_format" not in received[1]  # chat turn


def test_a_server_that_refuses_images_says_so_and_falls_back(tmp_path):
    image, amap = _scene(tmp_path)

    def text_only(body):
        if any(p["type"] == "image_url" for m in body["messages"] for p in _parts(m)):
            return 400, "Invalid content type. image_url is only supported by certain models."
        return _valid(body)

    url, received, stop = serve_openai_compatible(text_only)
    try:
        plain = Pipeline(_Grid(), exemplar_root=tmp_path)
        ev = plain.measure(amap, image)
        with pytest.raises(BackendUnavailableError, match="refused the image parts.*drop --vision"):
            create_reasoner("openai", base_url=url, images=True).explain(ev, plain.views(amap, image, ev))
        pipe = Pipeline(_Grid(), create_reasoner("openai", base_url=url, images=True, fallback="grounded"),
                        exemplar_root=tmp_path)
        expl = pipe.explain_map(amap, image).explanation
        text = Pipeline(_Grid(), create_reasoner("openai", base_url=url)).explain_map(amap, image).explanation
    finally:
        stop()
    assert expl.reasoner == "grounded" and "refused the image parts" in expl.flags[-1]
    assert text.reasoner == "openai"  # the same server is fine without --vision


@pytest.mark.parametrize("status, message, why", [
    (400, "This model's maximum context length is 4096 tokens.", "does not fit the model's context"),
    (401, "Incorrect API key provided", "check --api-key"),
    (500, "internal error", "HTTP 500"),
])
def test_refusals_fall_back_with_the_reason(tmp_path, status, message, why):
    image, amap = _scene(tmp_path)
    url, _, stop = serve_openai_compatible([(status, message)])
    try:
        r = create_reasoner("openai", base_url=url, http_retries=0, fallback="grounded")
        expl = Pipeline(_Grid(), r).explain_map(amap, image).explanation
    finally:
        stop()
    assert expl.reasoner == "grounded" and why in expl.flags[-1] and message[:20] in expl.flags[-1]


def test_a_server_without_structured_output_is_asked_again_without_it(tmp_path):
    image, amap = _scene(tmp_path)
    url, received, stop = serve_openai_compatible(
        lambda body: (400, "response_format json_schema is not supported") if "response_format" in body
        else _valid(body))
    try:
        pipe = Pipeline(_Grid(), create_reasoner("openai", base_url=url))
        first, second = pipe.explain_map(amap, image), pipe.explain_map(amap, image)
    finally:
        stop()
    assert first.explanation.reasoner == second.explanation.reasoner == "openai"
    # the OpenAI form, then llama.cpp's form, then without; never again after that
    assert [r.get("response_format", {}).get("type") for r in received] == ["json_schema", "json_object", None, None]


def test_a_trickling_server_is_cut_off_by_the_overall_deadline(tmp_path):
    image, amap = _scene(tmp_path)
    url, _, stop = serve_openai_compatible(["x" * 200], drip_s=0.5)  # 100+ s for the whole body
    try:
        r = create_reasoner("openai", base_url=url, timeout=30, deadline_s=1.5, fallback="grounded")
        t0 = time.monotonic()
        expl = Pipeline(_Grid(), r).explain_map(amap, image).explanation
        took = time.monotonic() - t0
    finally:
        stop()
    assert took < 6, f"the call took {took:.1f} s"
    assert expl.reasoner == "grounded" and "within the deadline of 1.5 s" in expl.flags[-1]


def test_cli_reasoner_options_carry_vision_and_deadline():
    from vlm_ad.cli._common import ReasonerOptions
    from vlm_ad.errors import ConfigError

    r = ReasonerOptions(reasoner="openai", base_url="http://127.0.0.1:9/v1", vision=True, deadline=5.0,
                        fallback="grounded").build()
    assert r.sees_images and r.primary.images and r.primary.deadline_s == 5.0
    assert not ReasonerOptions(reasoner="openai", base_url="http://127.0.0.1:9/v1").build().sees_images
    with pytest.raises(ConfigError, match="--vision .* --reasoner openai or hf, not 'grounded'"):
        ReasonerOptions(vision=True).build()
