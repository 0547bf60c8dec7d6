"""Property-based fuzzing (hypothesis) of what reads untrusted input: image files, ``-o KEY=VALUE`` options and LLM
replies. Each may only succeed or raise the documented error, never anything else."""

from __future__ import annotations

import io

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from vlm_ad.cli._common import parse_options  # noqa: E402
from vlm_ad.data import load_image  # noqa: E402
from vlm_ad.errors import ConfigError, ImageReadError  # noqa: E402
from vlm_ad.reasoning import Explanation, parse_explanation  # noqa: E402

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _png(h: int, w: int, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), 128).save(buf, format="PNG")
    return buf.getvalue()


@FAST
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from(["L", "RGB", "RGBA", "P", "I;16", "1"]),
       st.data())
def test_image_loader_reads_or_refuses_mutated_files(tmp_path, h, w, mode, data):
    raw = bytearray(_png(h, w, mode))
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), max_size=4))
    for pos, value in flips:
        raw[pos] = value
    path = tmp_path / "x.png"
    path.write_bytes(bytes(raw[:cut] if data.draw(st.booleans()) else raw))
    try:
        img = load_image(path)
    except ImageReadError as exc:
        assert str(path) in str(exc)  # the message names the file
        return
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


@FAST
@given(st.lists(st.text(max_size=20), max_size=5))
def test_option_parser_returns_pairs_or_says_key_value(items):
    try:
        out = parse_options(items)
    except ConfigError as exc:
        assert "KEY=VALUE" in str(exc)
        return
    assert len(out) <= len(items) and all(isinstance(k, str) and k for k in out)


@FAST
@given(st.one_of(st.text(max_size=200), st.builds(
    lambda v, c, s: f'{{"verdict": "{v}", "confidence": {c}, "steps": [{{"text": "{s}"}}], "summary": "{s}"}}',
    st.sampled_from(["anomalous", "normal", "Normal", "maybe", ""]), st.floats(-2, 2, allow_nan=False),
    st.text(alphabet=st.characters(blacklist_characters='"\\\n'), max_size=20))))
def test_llm_reply_parser_returns_a_valid_explanation_or_raises_value_error(text):
    try:
        expl = parse_explanation(text)
    except ValueError:
        return
    assert isinstance(expl, Explanation) and expl.verdict in ("normal", "anomalous") and 0 <= expl.confidence <= 1
