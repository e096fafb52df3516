"""Assignments: "next task" leasing, the task pages, skip and heartbeat (active time)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from annotation_app.deps import AnyUser, DbDep, SettingsDep, StoreDep, is_reviewer
from annotation_app.schemas import AssignmentOut, HeartbeatIn, NextOut, SkipIn
from annotation_app.templating import blob_url, render
from pixmo.assignments import get_assignment, heartbeat, next_assignment, skip_assignment
from pixmo.db.models import Assignment, Image, Project, User
from pixmo.projects import project_config
from pixmo.renditions import browser_key
from pixmo.submissions import task_label

router = APIRouter(tags=["assignments"])

TEMPLATES = {"caption": "task_caption.html", "points": "task_points.html", "point_explain": "task_point_explain.html",
             "ask": "task_ask.html"}


def _out(session, store, assignment: Assignment, user: User, resumed: bool = False) -> AssignmentOut:  # noqa: ANN001
    """The task as the caller may see it: annotators are not told which tasks are check (gold) items,
    or they could take more care over those alone and the check would measure nothing; nor the
    image's id (gold images, attached apart, stand out in the id order)."""
    project = session.get(Project, assignment.project_id)
    image = session.get(Image, assignment.image_id)
    label = task_label(session, assignment) if project.kind == "points" else None
    return AssignmentOut(
        id=assignment.id, project_id=project.id, project_kind=project.kind, image_id=image.id if is_reviewer(user) else None,
        image_url=blob_url(store, browser_key(store, image)), width=image.width, height=image.height,
        status=assignment.status, is_gold=assignment.is_gold if is_reviewer(user) else None, expires_at=assignment.expires_at,
        resumed=resumed, label=label, task_url=f"/tasks/{assignment.id}",
    )


@router.post("/api/projects/{project_id}/next", response_model=NextOut)
def api_next(project_id: int, db: DbDep, store: StoreDep, settings: SettingsDep, user: AnyUser):
    """Lease the next image of the project to the caller (or return their live lease)."""
    lease = next_assignment(db, project_id, user.id, secret=settings.require_secret())
    if lease is None:
        return NextOut(assignment=None, message="No work left in this project for you right now.")
    with db.session() as session:
        return NextOut(assignment=_out(session, store, session.get(Assignment, lease.assignment.id), user, lease.resumed))


@router.post("/projects/{project_id}/next", include_in_schema=False)
def page_next(request: Request, project_id: int, db: DbDep, settings: SettingsDep, user: AnyUser):
    lease = next_assignment(db, project_id, user.id, secret=settings.require_secret())
    if lease is None:
        with db.session() as session:
            project = session.get(Project, project_id)
        return render(request, "done.html", project=project)
    return RedirectResponse(f"/tasks/{lease.assignment.id}", status_code=303)


@router.get("/tasks/{assignment_id}", include_in_schema=False)
def task_page(request: Request, assignment_id: int, db: DbDep, store: StoreDep, user: AnyUser):
    with db.session() as session:
        assignment = get_assignment(session, assignment_id, user.id)
        project = session.get(Project, assignment.project_id)
        task = _out(session, store, assignment, user)
        context = {"project": project, "config": project_config(project), "task": task, "assignment": assignment}
        if project.kind in ("ask", "point_explain"):
            from pixmo.ask import exchange_for, explanation_view

            context["exchange"] = exchange = exchange_for(session, assignment)
            pending = [qa for qa in exchange if qa.status == "pending"]
            if project.kind == "point_explain" and pending:  # the answer on screen when the page was left
                text, marks = explanation_view(pending[-1])
                context["current"] = {"id": pending[-1].id, "question": pending[-1].question, "text": text,
                                      "marks": marks}
    response = render(request, TEMPLATES[project.kind], **context)
    # not kept for Back: a cached copy of a submitted task showed live controls
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/api/assignments/{assignment_id}", response_model=AssignmentOut)
def api_get(assignment_id: int, db: DbDep, store: StoreDep, user: AnyUser):
    """One of the caller's assignments."""
    with db.session() as session:
        return _out(session, store, get_assignment(session, assignment_id, user.id), user)


@router.post("/api/assignments/{assignment_id}/skip", response_model=AssignmentOut)
def api_skip(assignment_id: int, body: SkipIn, db: DbDep, store: StoreDep, user: AnyUser):
    """Give the image back (the reason is recorded); the caller is not offered it again."""
    assignment = skip_assignment(db, assignment_id, user.id, body.reason, active_seconds=body.active_seconds)
    with db.session() as session:
        return _out(session, store, session.get(Assignment, assignment.id), user)


@router.post("/api/assignments/{assignment_id}/heartbeat", status_code=204)
def api_heartbeat(assignment_id: int, body: HeartbeatIn, db: DbDep, user: AnyUser):
    """Record active time and keep the lease alive."""
    heartbeat(db, assignment_id, user.id, body.active_seconds)
    return Response(status_code=204)
