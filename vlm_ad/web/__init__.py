"""``vlm-ad serve``: a local web page to inspect images (map overlay with numbered regions, verdict, the nearest
normal exemplar next to each region, the explanation's steps and flags, a chat that keeps the conversation) and to
browse a report folder written by ``vlm-ad report``.

::

    from vlm_ad.web import create_app, serve

    app = create_app(pipeline, reports="my-report")   # a FastAPI app (tests drive it with TestClient)
    serve(pipeline, host="127.0.0.1", port=7860)      # the same app under uvicorn

FastAPI + one static page (no build step, nothing loaded from the internet) rather than Gradio: the page needs
two linked views of typed records and a per-image chat, which a small JSON API states exactly; Gradio pulls in
hundreds of MB and phones home unless told not to. Needs ``pip install 'vlm-ad[serve]'``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from vlm_ad.web.app import DEFAULT_MAX_UPLOAD_MB, WebError, create_app

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "WebError", "create_app", "serve", "serving"]


def serve(pipeline: Any, *, host: str = "127.0.0.1", port: int = 7860, reports: str | Path | None = None,
          examples: str | Path | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
          info: dict[str, Any] | None = None, log_level: str = "warning") -> None:
    """Run the web app until interrupted (see :func:`create_app` for the arguments)."""
    from vlm_ad._deps import require

    uvicorn = require("uvicorn", "the web app (vlm-ad serve)")
    app = create_app(pipeline, reports=reports, examples=examples, max_upload_mb=max_upload_mb, info=info)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextlib.contextmanager
def serving(app: Any, *, host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a background thread on a free port of ``host``; yields its base URL
    (``http://127.0.0.1:PORT``) and stops the server on exit. For tests and benchmarks that drive a browser."""
    from vlm_ad._deps import require

    uvicorn = require("uvicorn", "the web app (vlm-ad serve)")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))  # the port is held from here on: no race with another process picking it
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the web app did not start within {timeout:.0f} s")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
