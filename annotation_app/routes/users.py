"""Users: the annotator's home page with their own numbers, and user administration."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select

from annotation_app.deps import Admin, AnyUser, DbDep
from annotation_app.schemas import UserIn, UserOut, UserPatch
from annotation_app.templating import render
from pixmo.assignments import open_projects, user_stats
from pixmo.auth import create_user
from pixmo.db.models import ROLES, User
from pixmo.errors import ValidationError
from pixmo.projects import project_config
from pixmo.reviews import recent_rejections
from pixmo.users import revoke_tokens, update_user, user_by_id

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


@router.post("/admin/users/{user_id}", include_in_schema=False)
def users_change_form(
    request: Request,
    db: DbDep,
    admin: Admin,
    user_id: int,
    action: Annotated[Literal["activate", "deactivate", "role", "password"], Form()],
    role: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
):
    """The buttons of the users page: (de)activate, change the role, set a password."""
    changes = {"activate": {"is_active": True}, "deactivate": {"is_active": False},
               "role": {"role": role}, "password": {"password": password}}[action]
    try:
        with db.session(write_lock=True) as session:
            update_user(session, user_by_id(session, user_id).username, **changes)
    except ValidationError as exc:
        return render(request, "admin/users.html", 422, users=_users(db), roles=ROLES, error=str(exc))
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


@router.patch("/api/users/{user_id}", response_model=UserOut)
def change_user(user_id: int, body: UserPatch, db: DbDep, admin: Admin):
    """Change a user's role, password or active state (admin only). Deactivating ends their sessions,
    revokes their tokens and releases their leases; a new password ends their sessions; the last
    active admin cannot be deactivated or demoted (422)."""
    with db.session(write_lock=True) as session:
        user = user_by_id(session, user_id)
        return update_user(session, user.username, **body.model_dump(exclude_none=True))


@router.delete("/api/users/{user_id}/tokens")
def revoke_user_tokens(user_id: int, db: DbDep, admin: Admin, label: str | None = None) -> dict[str, int]:
    """Revoke a user's bearer tokens, or only those with ``label`` (admin only)."""
    with db.session(write_lock=True) as session:
        return {"revoked": revoke_tokens(session, user_by_id(session, user_id).username, label)}
