"""Test helpers shipped with the library: small generated data and the shared detector contract check.

Downstream code (and vlm-ad's own tests) use these to check a new detector honours the estimator contract.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from vlm_ad.types import AnomalyMap, Sample


def texture_crops(n: int, size: int = 96, seed: int = 0) -> list[np.ndarray]:
    """``n`` random (size, size, 3) uint8 crops of scikit-image's real brick texture."""
    from skimage import data

    brick = data.brick()  # (512, 512) uint8
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, 512 - size, 2)
        out.append(np.repeat(brick[y : y + size, x : x + size, None], 3, axis=2))
    return out


def plant_square(image: np.ndarray, *, colour=(255, 0, 0), frac: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``image`` with a coloured square of side ``frac * H`` planted off-centre, and its mask."""
    h, w = image.shape[:2]
    side = max(2, int(frac * h))
    y0, x0 = int(0.42 * h), int(0.31 * w)
    out = image.copy()
    out[y0 : y0 + side, x0 : x0 + side] = colour
    mask = np.zeros((h, w), bool)
    mask[y0 : y0 + side, x0 : x0 + side] = True
    return out, mask


def contract_data(size: int = 96) -> tuple[list[Sample], list[np.ndarray], np.ndarray]:
    """Six normal training crops, three normal test crops plus one with a planted square (last), its mask."""
    normal = [Sample(img, f"train/{i}") for i, img in enumerate(texture_crops(6, size, seed=0))]
    defect, mask = plant_square(texture_crops(1, size, seed=2)[0])
    return normal, texture_crops(3, size, seed=1) + [defect], mask


def check_detector_contract(make: Callable[[], object], tmp_path: Path, *, zero_shot: bool = False,
                            size: int = 96, ranks: bool = True, localises: bool = True) -> list[AnomalyMap]:
    """Assert the estimator contract on generated data; returns the maps of the four test images.

    ``make()`` builds an unfitted detector for ``size`` px inputs. Checked: ``__init__`` builds nothing (no
    embedder), predict before fit raises NotFittedError (unless zero-shot), fit returns self, one float32 map per
    image at its resolution, the planted defect scores highest and its map is higher inside the mask (unless
    ``ranks=False``, for random test models; ``localises=False`` skips the map check only), save/load round trip
    reproduces the scores.
    """
    from vlm_ad.detectors import load_detector
    from vlm_ad.errors import NotFittedError

    normal, test, mask = contract_data(size)
    det = make()
    assert getattr(det, "embedder_", None) is None, "__init__ must only store hyper-parameters (fit builds)"
    if not zero_shot:
        try:
            det.predict(test)
        except NotFittedError:
            pass
        else:
            raise AssertionError("predict() before fit() must raise NotFittedError")
    assert det.fit([] if zero_shot else normal) is det, "fit() must return self"
    maps = det.predict(test)
    assert len(maps) == len(test) and all(isinstance(m, AnomalyMap) for m in maps)
    assert all(m.map.shape == (size, size) and m.map.dtype == np.float32 for m in maps)
    scores = [m.score for m in maps]
    if ranks:
        assert scores[-1] > max(scores[:-1]), f"the planted defect must score highest: {scores}"
        if localises:
            assert maps[-1].map[mask].mean() > maps[-1].map[~mask].mean(), "the map must be higher inside the defect"
    det.save(tmp_path / "model")
    again = load_detector(tmp_path / "model")
    np.testing.assert_allclose([m.score for m in again.predict(test)], scores, rtol=1e-4, atol=1e-6)
    return maps


# ------------------------------------------------------------------------------------------ LLM test doubles
def scripted_chat_model(replies):
    """A langchain-core chat model that answers from a script, for tests of the reasoning chain.

    Args:
        replies: the replies in order; each is a string or a callable ``messages -> str``. The last one repeats.

    Returns:
        A ``BaseChatModel`` whose ``.calls`` records the messages of every call.
    """
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class ScriptedChatModel(BaseChatModel):
        script: list
        calls: list = []

        @property
        def _llm_type(self) -> str:
            return "scripted"

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            reply = self.script[min(len(self.calls), len(self.script) - 1)]
            self.calls.append(list(messages))
            text = reply(messages) if callable(reply) else reply
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    return ScriptedChatModel(script=list(replies), calls=[])


def serve_openai_compatible(replies, *, drip_s: float | None = None):
    """Start an OpenAI-compatible chat-completions server on 127.0.0.1 in a thread (for tests and demos).

    Args:
        replies: reply strings in order (the last one repeats), or a callable ``request_json -> str``. A reply may
            also be ``(status, message)``: an HTTP error with an OpenAI-style error body, e.g. ``(400, "this model
            does not support image input")``.
        drip_s: send each reply body one byte every ``drip_s`` seconds (a server that never quite stops).

    Returns:
        ``(base_url, requests, stop)``: the ``.../v1`` URL, the list of received request bodies (each with its
        ``_path`` and ``_auth`` header added, in arrival order), and a function that shuts the server down.
    """
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            received.append(body | {"_path": self.path, "_auth": self.headers.get("Authorization")})
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            reply = replies(body) if callable(replies) else replies[min(len(received) - 1, len(replies) - 1)]
            if isinstance(reply, tuple):
                status, message = reply
                return self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})
            self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model"),
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                          "finish_reason": "stop"}]})

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                if drip_s is None:
                    self.wfile.write(data)
                    return
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(drip_s)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up
                pass

        def log_message(self, *args):  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}/v1", received, stop


#: the system browser the browser tests drive (Debian's ``apt-get install chromium``; never a downloaded one);
#: ``$VLM_AD_CHROMIUM`` points elsewhere (e.g. /usr/bin/chromium-browser)
CHROMIUM = os.environ.get("VLM_AD_CHROMIUM", "/usr/bin/chromium")
#: flags for a headless run that never talks to the network on its own
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run")


def launch_chromium(playwright, executable: str | Path = CHROMIUM):
    """A headless Debian chromium driven by Playwright (``playwright.sync_api.sync_playwright()``'s object)."""
    return playwright.chromium.launch(executable_path=str(executable), args=list(CHROMIUM_ARGS), headless=True)
