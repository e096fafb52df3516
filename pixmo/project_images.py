"""Attach already-ingested images to a project: by id, by sha256, from another project, or all."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pixmo.db.models import Image, Project, ProjectImage
from pixmo.errors import NotFoundError, ValidationError
from pixmo.projects import attach_images, get_project


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
