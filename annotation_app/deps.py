"""Typed dependencies: settings, database, blob store, the current user, role and CSRF checks.

Authentication is either a bearer API token (scripts; exempt from CSRF checks because browsers
never attach it on their own) or the session cookie. Requests that change state with the cookie
must come from our own origin and carry the session's CSRF token (``X-CSRF-Token`` header or a
``csrf_token`` form field): a synchronizer token, checked against the server-side session row.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, status

from pixmo.auth import user_for_token
from pixmo.config import Settings
from pixmo.db.models import User
from pixmo.db.session import Database
from pixmo.logins import session_user
from pixmo.storage import BlobStore

SESSION_COOKIE = "pixmo_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
ROLE_RANK = {"annotator": 1, "reviewer": 2, "admin": 3}


def is_reviewer(user: User) -> bool:
    """Reviewers and admins: they may see what annotators are not told (which tasks are checks, image ids)."""
    return ROLE_RANK.get(user.role, 0) >= ROLE_RANK["reviewer"]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_store(request: Request) -> BlobStore:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_settings)]
DbDep = Annotated[Database, Depends(get_db)]
StoreDep = Annotated[BlobStore, Depends(get_store)]


@dataclass(frozen=True)
class Principal:
    """Who is calling and how: ``via`` is "token" or "cookie" (then ``csrf_token`` is set)."""

    user: User
    via: str
    csrf_token: str | None = None


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def get_principal(request: Request, db: DbDep) -> Principal | None:
    """The caller, from a bearer token or the session cookie; None when anonymous."""
    principal = _lookup(request, db)
    request.state.principal = principal  # pages render the user and CSRF token from here
    return principal


def _lookup(request: Request, db: Database) -> Principal | None:
    token = _bearer(request)
    # a token lookup writes its last-used time: take SQLite's write lock up front
    with db.session(write_lock=token is not None) as session:
        if token is not None:
            user = user_for_token(session, token)
            if user is None:
                raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid API token",
                                    headers={"WWW-Authenticate": "Bearer"})
            return Principal(user, "token")
        cookie = request.cookies.get(SESSION_COOKIE)
        found = session_user(session, cookie) if cookie else None
        if found is None:
            return None
        user, row = found
        return Principal(user, "cookie", row.csrf_token)


OptionalPrincipal = Annotated[Principal | None, Depends(get_principal)]


def same_origin(request: Request) -> bool:
    """False when the Origin (or, lacking it, the Referer) header names another host.

    Hosts, not schemes, are compared: behind a TLS-terminating proxy the app sees http while the
    browser says https. The configured public URL's host counts as ours too.
    """
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return source is None
    ours = {request.headers.get("host", request.url.netloc), urlsplit(request.app.state.settings.public_url).netloc}
    return urlsplit(source).netloc in ours


async def check_csrf(request: Request, principal: Principal) -> None:
    """Refuse a state-changing cookie request that is cross-site or lacks the session's token."""
    if request.method in SAFE_METHODS or principal.via != "cookie":
        return
    if not same_origin(request):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent.encode(), (principal.csrf_token or "").encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token; reload the page")


async def require_principal(request: Request, principal: OptionalPrincipal) -> Principal:
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "log in first", headers={"WWW-Authenticate": "Bearer"})
    await check_csrf(request, principal)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(require_principal)]


def require_role(role: str):  # noqa: ANN201 - a dependency
    """A dependency that yields the current user when their role is at least ``role``."""
    need = ROLE_RANK[role]

    def dependency(principal: CurrentPrincipal) -> User:
        if ROLE_RANK.get(principal.user.role, 0) < need:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the {role} role")
        return principal.user

    return dependency


AnyUser = Annotated[User, Depends(require_role("annotator"))]
Reviewer = Annotated[User, Depends(require_role("reviewer"))]
Admin = Annotated[User, Depends(require_role("admin"))]
