"""Recordings: the spoken-caption upload (idempotent) and reading a recording back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile, status
from fastapi.responses import JSONResponse

from annotation_app.deps import AnyUser, DbDep, SettingsDep, StoreDep, is_reviewer
from annotation_app.schemas import RecordingOut
from annotation_app.templating import blob_url
from pixmo.db.models import Recording
from pixmo.submissions import submit_recording

router = APIRouter(tags=["recordings"])


def _out(rec: Recording, replayed: bool = False) -> RecordingOut:
    return RecordingOut(id=rec.id, assignment_id=rec.assignment_id, duration_s=rec.duration_s, mime=rec.mime,
                        bytes=rec.bytes, sha256=rec.sha256, replayed=replayed)


@router.post("/api/assignments/{assignment_id}/recording", response_model=RecordingOut, status_code=201,
             responses={200: {"description": "a replay: the first upload with this idempotency key"}})
async def upload_recording(
    request: Request,
    assignment_id: int,
    db: DbDep,
    store: StoreDep,
    settings: SettingsDep,
    user: AnyUser,
    audio: Annotated[UploadFile, File(description="the recording (webm/opus, ogg, wav, ...)")],
    idempotency_key: Annotated[str | None, Form()] = None,
    active_seconds: Annotated[float | None, Form()] = None,
):
    """Submit the spoken caption of a leased caption task.

    The server decodes it and refuses (4xx with a message) what is not audio, too short, too long,
    silent or too big. The idempotency key (form field or ``Idempotency-Key`` header) makes retries
    safe: a replay answers 200 with the first upload's recording.
    """
    from starlette.concurrency import run_in_threadpool

    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                            f"The upload is larger than the {limit / 1e6:.1f} MB limit.")
    data = await audio.read(limit + 1)
    key = idempotency_key or request.headers.get("idempotency-key")
    result = await run_in_threadpool(
        submit_recording, db, store, assignment_id=assignment_id, user_id=user.id, data=data,
        idempotency_key=key, max_bytes=limit, active_seconds=active_seconds,
    )
    body = _out(result.recording, result.replayed)
    return JSONResponse(body.model_dump(), status_code=200 if result.replayed else 201)


@router.get("/api/recordings/{recording_id}")
def get_recording(recording_id: int, db: DbDep, store: StoreDep, user: AnyUser) -> dict:
    """A recording's metadata and a short-lived audio URL (its author, reviewers and admins)."""
    with db.session() as session:
        rec = session.get(Recording, recording_id)
        if rec is None or (rec.user_id != user.id and not is_reviewer(user)):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no recording {recording_id}")
        # the image id stays from annotators, as in their tasks (gold images stand out in the id order)
        image_id = rec.image_id if is_reviewer(user) else None
        return {**_out(rec).model_dump(), "audio_url": blob_url(store, rec.storage_key), "image_id": image_id}
