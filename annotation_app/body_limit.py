"""A cap on request bodies, applied before anything reads them.

FastAPI parses a body (and Starlette spools multipart files to disk) before a route's login check
or its own size check runs, so without this an anonymous client could make the server read and
store uploads of any size. A declared Content-Length over the cap is refused at once; a body
without one (chunked) is counted as it arrives and refused when it passes the cap.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse


def too_large_message(limit: int) -> str:
    return f"The request is larger than the {limit / 1e6:.1f} MB limit."


class BodyLimit:
    """ASGI middleware: HTTP requests whose body is over ``limit`` bytes get a 413."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"detail": too_large_message(self.limit)}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def capped() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # FastAPI passes an HTTPException from reading the body through as it is
                raise HTTPException(413, too_large_message(self.limit))
            return message

        await self.app(scope, capped, send)
