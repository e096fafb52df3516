"""Jinja2 templates (autoescaped) and the helpers pages use: blob URLs and the page context."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.templating import Jinja2Templates

from pixmo.storage import BlobStore, LocalStore, sign_url

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
BLOB_URL_SECONDS = 6 * 3600


def blob_url(store: BlobStore, key: str, expires: int = BLOB_URL_SECONDS) -> str:
    """A URL the browser can GET the blob from: signed ``/blobs/...`` (local) or presigned (S3).

    Local URLs are relative, so they work whatever host and port the app is reached on.
    """
    if isinstance(store, LocalStore):
        exp = int(time.time()) + expires
        return f"/blobs/{quote(key, safe='/')}?exp={exp}&sig={sign_url(key, exp, store.secret)}"
    return store.url(key, expires)


def render(request: Request, name: str, status_code: int = 200, **context: Any):  # noqa: ANN201
    """Render a page with the current user and CSRF token in its context."""
    principal = getattr(request.state, "principal", None)
    context.setdefault("user", principal.user if principal else None)
    context.setdefault("csrf_token", principal.csrf_token if principal else "")
    return templates.TemplateResponse(request, name, context, status_code=status_code)
