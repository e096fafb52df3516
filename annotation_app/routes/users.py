"""Users: the annotator's home page with their own numbers, and user administration."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select

from annotation_app.deps import Admin, AnyUser, DbDep
from annotation_app.schemas import UserIn, UserOut
from annotation_app.templating import render
from pixmo.assignments import open_projects, user_stats
from pixmo.auth import create_user
from pixmo.db.models import ROLES, User
from pixmo.errors import ValidationError
from pixmo.projects import project_config
from pixmo.reviews import recent_rejections

router = APIRouter(tags=["users"])


@router.get("/", include_in_schema=False)
def home(request: Request, db: DbDep, user: AnyUser):
    with db.session() as session:
        projects = [(p, project_config(p)) for p in open_projects(session)]
        stats = user_stats(session, user.id)
        rejections = recent_rejections(session, user.id)
    return render(request, "home.html", projects=projects, stats=stats, rejections=rejections)


@router.get("/api/me/stats")
def my_stats(db: DbDep, user: AnyUser) -> dict:
    """The caller's submissions, skips, active time and rejection rate, per project and in total."""
    with db.session() as session:
        return user_stats(session, user.id)


def _users(db) -> list[User]:  # noqa: ANN001
    with db.session() as session:
        return list(session.scalars(select(User).order_by(User.id)))


@router.get("/admin/users", include_in_schema=False)
def users_page(request: Request, db: DbDep, admin: Admin):
    return render(request, "admin/users.html", users=_users(db), roles=ROLES)


@router.post("/admin/users", include_in_schema=False)
def users_create_form(
    request: Request,
    db: DbDep,
    admin: Admin,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    role: Annotated[str, Form()] = "annotator",
):
    try:
        with db.session(write_lock=True) as session:
            create_user(session, username, password, role)
    except ValidationError as exc:
        return render(request, "admin/users.html", 422, users=_users(db), roles=ROLES, error=str(exc),
                      form={"username": username, "role": role})
    return RedirectResponse("/admin/users", status_code=303)


@router.get("/api/users", response_model=list[UserOut])
def list_users(db: DbDep, admin: Admin):
    """Every user (admin only)."""
    return _users(db)


@router.post("/api/users", response_model=UserOut, status_code=201)
def add_user(body: UserIn, db: DbDep, admin: Admin):
    """Create a user (admin only); the password is stored argon2-hashed."""
    with db.session(write_lock=True) as session:
        return create_user(session, body.username, body.password, body.role)
