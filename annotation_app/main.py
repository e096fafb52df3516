"""The application factory: settings, database, blob store, routers, static files, error pages."""

from __future__ import annotations

import logging
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from annotation_app.body_limit import BodyLimit
from annotation_app.routes import ask, assignments, auth, blobs, points, projects, recordings, reviews, users
from annotation_app.templating import HERE, render
from pixmo.ask import AskFailed, AskModel
from pixmo.assignments import LeaseError
from pixmo.config import Settings, get_settings
from pixmo.db.session import Database, get_database
from pixmo.errors import NotFoundError, PixmoError, ValidationError
from pixmo.llm.errors import LLMError
from pixmo.logins import LoginThrottled
from pixmo.storage import BlobStore, open_store
from pixmo.submissions import UploadRejected

log = logging.getLogger(__name__)

UPLOAD_OVERHEAD = 64 * 1024

# how PostgreSQL refuses a NUL: in a text column, and inside a JSON value (as \u0000)
_NUL_MESSAGES = ("NUL (0x00)", "unsupported Unicode escape sequence")


def _wants_html(request: Request) -> bool:
    return (
        request.method == "GET"
        and not request.url.path.startswith(("/api/", "/blobs/"))
        and "text/html" in request.headers.get("accept", "")
    )


def _error_status(exc: PixmoError) -> int:
    if isinstance(exc, UploadRejected):
        return exc.status
    if isinstance(exc, LoginThrottled):
        return 429
    if isinstance(exc, (AskFailed, LLMError)):
        return 502
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, LeaseError):
        return 409
    if isinstance(exc, ValidationError):
        return 422
    return 400


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PixmoError)
    async def library_error(request: Request, exc: PixmoError):  # noqa: ANN202
        code = _error_status(exc)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, LoginThrottled) else None
        message = str(exc)
        if isinstance(exc, LLMError):
            # the backend's address and its server's own words are for the operator's log, not the page
            log.warning("the language model failed on %s %s: %s", request.method, request.url.path, exc)
            message = "the language model is not available right now; try again in a moment"
        if _wants_html(request):
            return render(request, "error.html", code, status=code, message=message)
        body = {"detail": message}
        if isinstance(exc, UploadRejected):
            body["reason"] = exc.reason
        return JSONResponse(body, status_code=code, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # noqa: ANN202
        if _wants_html(request):
            if exc.status_code == 401:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
            return render(request, "error.html", exc.status_code, status=exc.status_code, message=exc.detail)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def out_of_range(request: Request, exc: Exception):  # noqa: ANN202
        # an id or number beyond what the database (SQLite: OverflowError; PostgreSQL: DataError)
        # or a date can hold: no such row, and the request's fault, not the server's; likewise a NUL
        # character, which PostgreSQL's text columns cannot hold
        if isinstance(exc, DataError) and any(m in str(exc.orig) for m in _NUL_MESSAGES):
            message = "text in the request may not contain NUL characters"
        elif isinstance(exc, DataError) and "out of range" not in str(exc.orig):
            raise exc
        else:
            message = "a number in the request is out of range"
        if _wants_html(request):
            return render(request, "error.html", 422, status=422, message=message)
        return JSONResponse({"detail": message}, status_code=422)

    @app.exception_handler(UnicodeEncodeError)
    async def not_unicode(request: Request, exc: UnicodeEncodeError):  # noqa: ANN202
        # a lone surrogate (JSON "\ud83d") in free text: valid JSON, but no text a database or a
        # reply can hold; the driver refuses it as it binds the value, so nothing was stored
        message = "text in the request must be valid Unicode (a lone surrogate such as \\ud83d is not)"
        if _wants_html(request):
            return render(request, "error.html", 422, status=422, message=message)
        return JSONResponse({"detail": message}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):  # noqa: ANN202
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:])
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        if _wants_html(request):  # a hand-edited page address, say: a page, not raw JSON
            return render(request, "error.html", 422, status=422, message=message)
        return JSONResponse({"detail": message, "errors": jsonable(errors)}, status_code=422)


def jsonable(errors: list) -> list:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(errors, custom_encoder={Exception: str, bytes: lambda b: b.decode(errors="replace")})


def create_app(
    settings: Settings | None = None,
    db: Database | None = None,
    store: BlobStore | None = None,
    ask_model: AskModel | None = None,
) -> FastAPI:
    """Build the app; by default everything comes from the environment (``PIXMO_*``).

    ``ask_model`` answers ask-the-model questions; by default the ``pixmo.llm`` backend named by
    ``PIXMO_LLM_BACKEND`` (the bundled local model), loaded on the first question.
    """
    settings = settings or get_settings()
    settings.require_secret()  # refuse to start in production with no (or the default) secret
    app = FastAPI(
        title="PixMo annotation app",
        description="Speech captions, pointing, ask-the-model and review for PixMo-style data.",
        version="0.1.0",
    )
    app.state.settings = settings
    app.state.db = db or get_database(settings.resolved_database_url)
    app.state.store = store or open_store(settings=settings)
    app.state.ask_model = ask_model or AskModel()
    _install_error_handlers(app)
    # an upload at the limit, with room for its form fields and multipart framing
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + UPLOAD_OVERHEAD)
    @app.middleware("http")
    async def no_framing(request: Request, call_next):  # noqa: ANN202 - a reviewer's click inside another site's frame
        response = await call_next(request)
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    for module in (auth, users, projects, assignments, recordings, points, ask, reviews, blobs):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
