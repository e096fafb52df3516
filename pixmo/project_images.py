"""Attach already-ingested images to a project (by id, by sha256, from another project, or all),
and give gold (check) images their expected answers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pixmo.db.models import Image, Project, ProjectImage
from pixmo.errors import NotFoundError, ValidationError
from pixmo.formats.points import PointShapeError, stored_points
from pixmo.projects import attach_images, clean_label, get_project, project_config


def attach_ingested(
    session: Session,
    project: Project,
    *,
    image_ids: list[int] | None = None,
    sha256: list[str] | None = None,
    from_project: str | None = None,
    all_images: bool = False,
    gold: bool = False,
) -> int:
    """Attach the chosen images (already attached ones are left alone); returns how many were new."""
    ids: set[int] = set()
    if image_ids:
        found = set(session.scalars(select(Image.id).where(Image.id.in_(image_ids))))
        missing = sorted(set(image_ids) - found)
        if missing:
            raise NotFoundError(f"no images with ids {missing[:10]}")
        ids |= found
    if sha256:
        wanted = {s.strip().lower() for s in sha256 if s.strip()}
        found_sha = dict(session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_(wanted))).all())
        missing_sha = sorted(wanted - set(found_sha))
        if missing_sha:
            raise NotFoundError(f"no images with sha256 {missing_sha[:3]}")
        ids |= set(found_sha.values())
    if from_project:
        source = get_project(session, from_project)
        ids |= set(session.scalars(select(ProjectImage.image_id).where(ProjectImage.project_id == source.id)))
    if all_images:
        ids |= set(session.scalars(select(Image.id)))
    if not (image_ids or sha256 or from_project or all_images):
        raise ValidationError("choose images: ids, sha256s, a source project, or all images")
    return attach_images(session, project, sorted(ids), gold=gold)


def image_count(session: Session, project: Project) -> int:
    return int(session.scalar(select(func.count()).select_from(ProjectImage).where(ProjectImage.project_id == project.id)) or 0)


def find_image(session: Session, ref: str | int) -> Image:
    """An image by id or by sha256 (NotFoundError names what was looked for)."""
    text = str(ref).strip().lower()
    if len(text) == 64 or not (text.isascii() and text.isdigit()):  # a sha256 even when all digits
        image = session.scalars(select(Image).where(Image.sha256 == text)).first()
    else:
        image = session.get(Image, int(text)) if int(text) < 2**63 else None
    if image is None:
        raise NotFoundError(f"no image {ref!r} (give an image id or sha256)")
    return image


def check_gold_answer(project: Project, answer: Any) -> dict[str, Any]:
    """A pointing gold answer in its stored form, ``{"points": {label: [[x, y], ...]}}`` (normalised,
    ``[]``: not present); ``{"label": .., "points": [..]}`` is taken for one label. ValidationError
    says what is wrong."""
    if isinstance(answer, dict) and isinstance(answer.get("label"), str) and isinstance(answer.get("points"), list):
        answer = {"points": {answer["label"]: answer["points"]}}
    if not isinstance(answer, dict) or not isinstance(answer.get("points"), dict) or not answer["points"]:
        raise ValidationError('a gold answer is {"points": {"label": [[x, y], ...]}} (normalised 0-1; [] for not '
                              'present), or {"label": "...", "points": [[x, y], ...]}')
    allowed = project_config(project).labels
    out: dict[str, list[list[float]]] = {}
    for label, points in answer["points"].items():
        try:
            label = clean_label(label)
        except ValueError as exc:
            raise ValidationError(f"gold label refused: {exc}") from None
        if not label:
            raise ValidationError("a gold label is empty")
        if allowed and label not in allowed:
            raise ValidationError(f"{label!r} is not one of the project's labels")
        if label in out:
            raise ValidationError(f"the label {label!r} is given twice")
        try:
            out[label] = stored_points(points)
        except PointShapeError:
            raise ValidationError(f"the gold points of {label!r} must be a list of [x, y] pairs of numbers") from None
        except ValidationError as exc:
            raise ValidationError(f"a gold point of {label!r} lies outside the image ({exc})") from None
    return {"points": out}


def set_gold_answer(session: Session, project: Project, image: Image, answer: Any | None) -> ProjectImage:
    """Make an attached image a gold (check) item of a pointing project with this expected answer;
    ``None`` clears the answer (the image stays gold, unscored). Point sets on it are then scored
    for gold accuracy (`pixmo.curation.gold`)."""
    if project.kind != "points":
        raise ValidationError(f"gold answers are scored for points projects; {project.name!r} is a {project.kind} project")
    row = session.scalars(select(ProjectImage).where(ProjectImage.project_id == project.id,
                                                     ProjectImage.image_id == image.id).with_for_update()).first()
    if row is None:
        raise NotFoundError(f"image {image.id} is not in project {project.name!r}; attach it first")
    row.gold_answer = None if answer is None else check_gold_answer(project, answer)
    row.is_gold = True
    session.flush()
    return row
