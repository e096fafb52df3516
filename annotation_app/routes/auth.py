"""Login, logout and "who am I"."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import RedirectResponse

from annotation_app.deps import SESSION_COOKIE, CurrentPrincipal, DbDep, OptionalPrincipal, SettingsDep, same_origin
from annotation_app.schemas import UserOut
from annotation_app.templating import render
from pixmo.logins import SESSION_TTL, LoginThrottled, end_session, login

router = APIRouter(tags=["auth"])


def _safe_next(target: str | None) -> str:
    # only local paths: an open redirect would let a phishing link borrow our login page
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.get("/login", include_in_schema=False)
def login_page(request: Request, principal: OptionalPrincipal, next: str = "/"):  # noqa: A002
    if principal is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "login.html", next=_safe_next(next))


@router.post("/login", include_in_schema=False)
def login_submit(
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",  # noqa: A002
):
    if not same_origin(request):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site login refused")
    ip = request.client.host if request.client else "unknown"
    try:
        with db.session(write_lock=True) as session:
            result = login(session, username, password, ip)
    except LoginThrottled as exc:
        page = render(request, "login.html", 429, next=_safe_next(next), username=username, error=str(exc))
        page.headers["Retry-After"] = str(exc.retry_after)
        return page
    if result is None:
        return render(request, "login.html", 401, next=_safe_next(next), username=username,
                      error="Wrong username or password.")
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE, result.token, max_age=int(SESSION_TTL.total_seconds()), httponly=True, samesite="lax",
        secure=settings.public_url.startswith("https://"), path="/",
    )
    return response


@router.post("/logout", include_in_schema=False)
def logout(request: Request, db: DbDep, principal: CurrentPrincipal):
    with db.session(write_lock=True) as session:
        end_session(session, request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/api/me", response_model=UserOut)
def me(principal: CurrentPrincipal):
    """The calling user."""
    return principal.user
