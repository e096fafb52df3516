"""Blobs of the local store, served to browsers through HMAC-signed, expiring URLs."""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

from annotation_app.deps import StoreDep
from pixmo.errors import StorageError
from pixmo.storage import LocalStore, verify_signed_url

router = APIRouter(tags=["blobs"])


@router.get("/blobs/{key:path}", include_in_schema=False)
def get_blob(key: str, store: StoreDep, exp: str = "", sig: str = ""):
    if not isinstance(store, LocalStore):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "blobs are served by the object store")
    if not verify_signed_url(key, exp, sig, store.secret):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid or expired link")
    try:
        path = store.path_for(key)
    except StorageError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such blob") from exc
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such blob")
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    # content-addressed blobs never change; the URL expires, so let the browser cache until then
    return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=3600",
                                                          "X-Content-Type-Options": "nosniff"})
