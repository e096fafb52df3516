"""Projects: administration pages and the JSON API (create, attach images, progress)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import func, select

from annotation_app.deps import Admin, AnyUser, DbDep, Reviewer, is_reviewer
from annotation_app.schemas import AttachIn, AttachOut, GoldIn, GoldOut, ProjectIn, ProjectOut
from annotation_app.templating import render
from pixmo.assignments import project_progress
from pixmo.db.models import PROJECT_KINDS, Image, Project, User
from pixmo.errors import NotFoundError, PixmoError
from pixmo.project_images import attach_ingested, find_image, image_count, set_gold_answer
from pixmo.projects import GUIDING_QUESTIONS, create_project, list_projects

router = APIRouter(tags=["projects"])


def _project(session, project_id: int) -> Project:  # noqa: ANN001
    project = session.get(Project, project_id)
    if project is None:
        raise NotFoundError(f"no project with id {project_id}")
    return project


# settings annotators are not shown: knowing the gold fraction helps guess which tasks are checks
HIDDEN_FROM_ANNOTATORS = ("gold_fraction",)


def _out(project: Project, images: int | None = None, user: User | None = None) -> ProjectOut:
    config = dict(project.config or {})
    if user is not None and not is_reviewer(user):
        for name in HIDDEN_FROM_ANNOTATORS:
            config.pop(name, None)
    return ProjectOut(id=project.id, name=project.name, kind=project.kind, instructions=project.instructions,
                      config=config, images=images)


# --------------------------------------------------------------------------- pages


def _admin_page(request: Request, db, status_code: int = 200, **extra):  # noqa: ANN001, ANN202
    with db.session() as session:
        rows = [(p, project_progress(session, p)) for p, _ in list_projects(session)]
        n_images = session.scalar(select(func.count()).select_from(Image)) or 0
    return render(request, "admin/projects.html", status_code, projects=rows, kinds=PROJECT_KINDS,
                  n_images=n_images, **extra)


@router.get("/admin", include_in_schema=False)
def admin_home(admin: Admin):
    return RedirectResponse("/admin/projects", status_code=303)


@router.get("/admin/projects", include_in_schema=False)
def projects_page(request: Request, db: DbDep, admin: Admin):
    return _admin_page(request, db)


@router.post("/admin/projects", include_in_schema=False)
def projects_create_form(
    request: Request,
    db: DbDep,
    admin: Admin,
    name: Annotated[str, Form()],
    kind: Annotated[str, Form()],
    instructions: Annotated[str, Form()] = "",
    min_seconds: Annotated[float, Form()] = 60.0,
    max_seconds: Annotated[float, Form()] = 90.0,
    overlap: Annotated[int, Form()] = 1,
    labels: Annotated[str, Form()] = "",
    gold_fraction: Annotated[float, Form()] = 0.0,
    max_points: Annotated[int, Form()] = 100,
    lease_minutes: Annotated[float, Form()] = 30.0,
    language: Annotated[str, Form()] = "en",
    attach_all: Annotated[bool, Form()] = False,
):
    label_list = [line.strip() for line in labels.splitlines() if line.strip()]
    try:
        with db.session(write_lock=True) as session:
            project = create_project(session, name.strip(), kind, instructions, min_seconds=min_seconds,
                                     max_seconds=max_seconds, overlap=overlap, labels=label_list,
                                     gold_fraction=gold_fraction, max_points=max_points,
                                     lease_minutes=lease_minutes, language=language)
            if attach_all:
                attach_ingested(session, project, all_images=True)
            project_id = project.id
    except PixmoError as exc:
        return _admin_page(request, db, 422, error=str(exc), form={
            "name": name, "kind": kind, "instructions": instructions, "labels": labels, "min_seconds": min_seconds,
            "max_seconds": max_seconds, "overlap": overlap, "gold_fraction": gold_fraction, "max_points": max_points,
            "lease_minutes": lease_minutes, "language": language})
    return RedirectResponse(f"/admin/projects/{project_id}", status_code=303)


def _project_page(request: Request, db, project_id: int, status_code: int = 200, **extra):  # noqa: ANN001, ANN202
    with db.session() as session:
        project = _project(session, project_id)
        progress = project_progress(session, project)
        others = [p.name for p, _ in list_projects(session) if p.id != project_id]
    return render(request, "admin/project.html", status_code, project=project, progress=progress, others=others,
                  questions=GUIDING_QUESTIONS, **extra)


@router.get("/admin/projects/{project_id}", include_in_schema=False)
def project_page(request: Request, db: DbDep, admin: Admin, project_id: int):
    return _project_page(request, db, project_id)


@router.post("/admin/projects/{project_id}/images", include_in_schema=False)
def attach_form(
    request: Request,
    db: DbDep,
    admin: Admin,
    project_id: int,
    source: Annotated[str, Form()] = "all",
    from_project: Annotated[str, Form()] = "",
    sha256: Annotated[str, Form()] = "",
    gold: Annotated[bool, Form()] = False,
):
    try:
        with db.session(write_lock=True) as session:
            project = _project(session, project_id)
            added = attach_ingested(
                session, project, all_images=source == "all", from_project=from_project if source == "project" else None,
                sha256=sha256.split() if source == "sha256" else None, gold=gold,
            )
    except PixmoError as exc:
        return _project_page(request, db, project_id, 422, error=str(exc))
    return _project_page(request, db, project_id, notice=f"attached {added} new image(s)")


# --------------------------------------------------------------------------- API


@router.get("/api/projects", response_model=list[ProjectOut])
def api_list_projects(db: DbDep, user: AnyUser):
    """Every project with its image count."""
    with db.session() as session:
        return [_out(p, n, user) for p, n in list_projects(session)]


@router.post("/api/projects", response_model=ProjectOut, status_code=201)
def api_create_project(body: ProjectIn, db: DbDep, admin: Admin):
    """Create a project (admin only)."""
    config = body.model_dump(exclude={"name", "kind", "instructions"})
    with db.session(write_lock=True) as session:
        return _out(create_project(session, body.name, body.kind, body.instructions, **config), 0)


@router.get("/api/projects/{project_id}", response_model=ProjectOut)
def api_get_project(project_id: int, db: DbDep, user: AnyUser):
    """One project."""
    with db.session() as session:
        project = _project(session, project_id)
        return _out(project, image_count(session, project), user)


@router.post("/api/projects/{project_id}/images", response_model=AttachOut)
def api_attach(project_id: int, body: AttachIn, db: DbDep, admin: Admin):
    """Attach ingested images to a project (admin only)."""
    with db.session(write_lock=True) as session:
        project = _project(session, project_id)
        added = attach_ingested(session, project, image_ids=body.image_ids, sha256=body.sha256,
                                from_project=body.from_project, all_images=body.all_images, gold=body.gold)
        return AttachOut(attached=added, images=image_count(session, project))


@router.put("/api/projects/{project_id}/gold/{image}", response_model=GoldOut)
def api_gold(project_id: int, image: str, body: GoldIn, db: DbDep, admin: Admin):
    """Make an attached image (id or sha256) a gold item of a points project with its expected answer (admin only)."""
    with db.session(write_lock=True) as session:
        row = set_gold_answer(session, _project(session, project_id), find_image(session, image), body.answer)
        return GoldOut(image_id=row.image_id, is_gold=row.is_gold, gold_answer=row.gold_answer)


@router.get("/api/projects/{project_id}/progress")
def api_progress(project_id: int, db: DbDep, user: Reviewer) -> dict:
    """Images, completed images, assignments by state, reviews and active time (reviewers, admins)."""
    with db.session() as session:
        return project_progress(session, _project(session, project_id))
