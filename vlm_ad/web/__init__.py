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

from pathlib import Path
from typing import Any

from vlm_ad.web.app import DEFAULT_MAX_UPLOAD_MB, WebError, create_app

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "WebError", "create_app", "serve"]


def serve(pipeline: Any, *, host: str = "127.0.0.1", port: int = 7860, reports: str | Path | None = None,
          examples: str | Path | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
          info: dict[str, Any] | None = None, log_level: str = "warning") -> None:
    """Run the web app until interrupted (see :func:`create_app` for the arguments)."""
    from vlm_ad._deps import require

    uvicorn = require("uvicorn", "the web app (vlm-ad serve)")
    app = create_app(pipeline, reports=reports, examples=examples, max_upload_mb=max_upload_mb, info=info)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
