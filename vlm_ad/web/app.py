"""The FastAPI app behind ``vlm-ad serve``: one static page (``static/``, no build step, nothing fetched from the
internet) and a small JSON API.

====================================  =====================================================================
route                                 what
====================================  =====================================================================
``GET /``                             the page (tabs: inspect an image, browse a report folder)
``GET /api/info``                     model, reasoner, examples, whether a report folder is open
``POST /api/analyze``                 multipart ``file``: detect, measure, explain; a new chat session
``POST /api/analyze/example``         ``{"name": ...}``: the same for one of ``--examples``
``POST /api/chat``                    ``{"session", "question"}``: the answer, with the earlier turns as context
``GET /api/report``                   report rows: ``verdict=all|anomalous|normal|failed``, ``sort``, paging
``GET /api/report/{index}``           one record as stored in ``report.jsonl``
``GET /report/files/overlays/...``    an overlay PNG of the report folder
====================================  =====================================================================

Every error is a JSON ``{"error": message}`` with a 4xx status (5xx only for a failure of the server itself,
whose traceback goes to the server log, never to the page).
"""

# no "from __future__ import annotations": FastAPI reads the routes' annotations, which name local imports

import logging
import re
import tempfile
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from vlm_ad._deps import require
from vlm_ad.chat import ChatSession
from vlm_ad.errors import ConfigError, DataError, ImageTooLargeError, ReasonerError
from vlm_ad.pipeline import Pipeline, load_sample
from vlm_ad.web.views import SORTS, VERDICTS, ReportFolder, analysis_json

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "WebError", "create_app"]

log = logging.getLogger("vlm_ad.web")
STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD_MB = 50
MAX_QUESTION = 2000
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


class WebError(Exception):
    """An error the page shows as is: an HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Sessions:
    """Chat sessions by id; the oldest are dropped past ``limit`` sessions or ``max_pixels`` pixels in all (each
    holds one image, its map and its evidence in memory)."""

    def __init__(self, limit: int = 32, max_pixels: int = 120_000_000) -> None:
        self.limit, self.max_pixels = limit, max_pixels
        self._items: OrderedDict[str, ChatSession] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, session: ChatSession) -> str:
        sid = uuid.uuid4().hex
        with self._lock:
            self._items[sid] = session
            while len(self._items) > 1 and (len(self._items) > self.limit or self._pixels() > self.max_pixels):
                self._items.popitem(last=False)
        return sid

    def _pixels(self) -> int:
        return sum(int(s.explained.image.shape[0]) * int(s.explained.image.shape[1]) for s in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def get(self, sid: str) -> ChatSession:
        with self._lock:
            if sid not in self._items:
                raise WebError(404, "this chat session has expired (the server keeps only the latest images in "
                                    "memory); analyse the image again")
            self._items.move_to_end(sid)
            return self._items[sid]


def _examples(root: Path | None) -> dict[str, Path]:
    """``--examples``: relative name -> file, for the page's picker (at most 500)."""
    if root is None:
        return {}
    from vlm_ad.data import ImageFolder
    from vlm_ad.errors import EmptyDatasetError

    try:
        items = ImageFolder(root, recursive=True).items
    except EmptyDatasetError as exc:
        raise ConfigError(f"--examples: {exc}") from None
    return {it.image_id: Path(it.path) for it in items[:500]}


class Service:
    """What the routes call: the pipeline (one image at a time), the chat sessions, the report folder."""

    def __init__(self, pipeline: Pipeline, *, reports: Path | None, examples: Path | None, max_upload_mb: float,
                 info: dict[str, Any]) -> None:
        self.pipeline, self.sessions = pipeline, Sessions()
        self.report = None if reports is None else ReportFolder(Path(reports))
        self.examples = _examples(examples)
        self.max_bytes = int(max_upload_mb * 1e6)
        self.info = info
        self._compute = threading.Lock()  # one image through the model at a time (2 cores; torch shares them)

    def analyze_file(self, name: str, data: bytes) -> dict[str, Any]:
        """An uploaded file through the chain. Unreadable, truncated or too large images raise :class:`WebError`."""
        if len(data) > self.max_bytes:
            raise WebError(413, f"{name} is {len(data) / 1e6:.1f} MB, above this server's {self.max_bytes / 1e6:.0f} "
                                "MB upload limit (vlm-ad serve --max-upload-mb)")
        if not data:
            raise WebError(400, f"{name} is empty: choose an image file (PNG, JPEG, BMP, TIFF)")
        safe = _SAFE_NAME.sub("_", Path(name).name)[-120:] or "upload"
        with tempfile.TemporaryDirectory(prefix="vlm-ad-upload-") as tmp:
            path = Path(tmp) / safe
            path.write_bytes(data)
            try:
                sample = load_sample(path)
            except DataError as exc:
                message = str(exc).replace(str(path), safe)
                raise WebError(413 if isinstance(exc, ImageTooLargeError) else 400, message) from None
        return self._analyze(sample)

    def analyze_example(self, name: str) -> dict[str, Any]:
        if name not in self.examples:
            raise WebError(404, f"{name!r} is not one of this server's examples")
        try:
            sample = load_sample(self.examples[name])
        except DataError as exc:
            raise WebError(400, str(exc)) from None
        sample.image_id = name
        return self._analyze(sample)

    def _analyze(self, sample) -> dict[str, Any]:
        try:
            with self._compute:
                ex = self.pipeline.run(sample)
                session = ChatSession(ex, self.pipeline.reasoner)
                return analysis_json(ex, self.pipeline, session=self.sessions.add(session))
        except ReasonerError as exc:
            raise WebError(502, f"the reasoner failed: {exc}") from None
        except (ConfigError, DataError) as exc:
            raise WebError(400, str(exc)) from None
        except Exception as exc:  # a failure inside the chain on an image that did load: say which, log the rest
            log.exception("analysing %s failed", sample.image_id)
            h, w = sample.image.shape[:2]
            raise WebError(422, f"vlm-ad could not analyse {sample.image_id} ({w} x {h} px): {type(exc).__name__} "
                                "inside the detector or the evidence; the server log has the details") from None

    def chat(self, sid: str, question: str) -> dict[str, Any]:
        question = question.strip()
        if not question:
            raise WebError(400, "ask a question, e.g. 'where is the defect?'")
        if len(question) > MAX_QUESTION:
            raise WebError(400, f"the question is {len(question)} characters long; at most {MAX_QUESTION}")
        session = self.sessions.get(sid)
        try:
            with self._compute:
                answer = session.ask(question)
        except ReasonerError as exc:
            raise WebError(502, f"the reasoner failed: {exc}") from None
        return {"answer": answer, "turns": len(session.history)}

    def folder(self) -> ReportFolder:
        if self.report is None:
            raise WebError(404, "no report folder is open: start the server with --reports DIR (a folder written by "
                                "'vlm-ad report')")
        return self.report


def create_app(pipeline: Pipeline, *, reports: str | Path | None = None, examples: str | Path | None = None,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, info: dict[str, Any] | None = None):
    """The FastAPI app serving ``pipeline`` (and, with ``reports``, a folder written by ``vlm-ad report``).

    Args:
        pipeline: the detector, reasoner, namer and exemplar images to run.
        reports: a report folder to browse in the second tab.
        examples: a folder of images the page offers to pick from.
        max_upload_mb: uploads larger than this are refused (413) before they are decoded; the pixel cap of
            :func:`vlm_ad.data.load_image` (``$VLM_AD_MAX_PIXELS``) still applies after.
        info: shown in the page's header (e.g. the model folder and the reasoner).
    """
    require("fastapi", "the web app (vlm-ad serve)")
    require("python_multipart", "file uploads in the web app (vlm-ad serve)")
    from fastapi import FastAPI, File, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse
    from pydantic import BaseModel

    svc = Service(pipeline, reports=None if reports is None else Path(reports),
                  examples=None if examples is None else Path(examples), max_upload_mb=max_upload_mb,
                  info=info or {})
    app = FastAPI(title="vlm-ad", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc

    @app.middleware("http")
    async def _upload_size(request: Request, call_next):
        # refuse an oversized upload from its header, before the body is read and spooled to disk
        size = request.headers.get("content-length", "")
        if request.url.path == "/api/analyze" and size.isdigit() and int(size) > svc.max_bytes + 65536:
            return JSONResponse({"error": f"the upload is {int(size) / 1e6:.1f} MB, above this server's "
                                          f"{svc.max_bytes / 1e6:.0f} MB upload limit (vlm-ad serve --max-upload-mb)"},
                                status_code=413)
        return await call_next(request)

    @app.exception_handler(WebError)
    async def _web_error(request: Request, exc: WebError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = ["{}: {}".format(".".join(str(x) for x in e.get("loc", ())[1:]) or "request", e.get("msg"))
                 for e in exc.errors()]
        return JSONResponse({"error": "bad request: " + "; ".join(parts)}, status_code=422)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("request %s failed", request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server log has the details"},
                            status_code=500)

    class ExampleRequest(BaseModel):
        name: str

    class ChatRequest(BaseModel):
        session: str
        question: str

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        path = STATIC / name
        if name not in ("app.js", "app.css") or not path.is_file():
            raise WebError(404, f"no static file {name!r}")
        return FileResponse(path)

    @app.get("/api/info")
    def api_info():
        return svc.info | {"examples": list(svc.examples), "reports": svc.report is not None,
                           "max_upload_mb": svc.max_bytes / 1e6}

    @app.post("/api/analyze")
    def api_analyze(file: UploadFile = File(...)):
        data = file.file.read(svc.max_bytes + 1)
        return svc.analyze_file(file.filename or "upload", data)

    @app.post("/api/analyze/example")
    def api_example(req: ExampleRequest):
        return svc.analyze_example(req.name)

    @app.post("/api/chat")
    def api_chat(req: ChatRequest):
        return svc.chat(req.session, req.question)

    @app.get("/api/report")
    def api_report(verdict: str = "all", sort: str = "score_desc", offset: int = 0, limit: int = 50):
        if verdict not in VERDICTS or sort not in SORTS:
            raise WebError(400, f"verdict must be one of {', '.join(VERDICTS)} and sort one of {', '.join(SORTS)}")
        return svc.folder().rows(verdict=verdict, sort=sort, offset=max(0, offset), limit=min(max(1, limit), 500))

    @app.get("/api/report/{index}")
    def api_record(index: int):
        rec = svc.folder().record(index)
        if rec is None:
            raise WebError(404, f"no record {index} in the report")
        return rec

    @app.get("/report/files/{rel:path}", include_in_schema=False)
    def report_file(rel: str):
        path = svc.folder().file(rel)
        if path is None:
            raise WebError(404, f"no overlay {rel!r} in the report folder")
        return FileResponse(path, media_type="image/png")

    return app
