"""Review actions: reviewers (and admins) approve, reject with a reason, or flag any submission.

Every call re-reads the acting user from the database, so a deactivated reviewer or an annotator
cannot write a verdict whatever a client remembers about them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from pixmo.auth import token_hash, user_for_token
from pixmo.db.models import ApiToken, Review, User
from pixmo.db.session import Database
from pixmo.errors import PixmoError
from pixmo.logins import LoginThrottled, check_credentials, end_session, open_session, session_user
from pixmo.reviews import add_review

REVIEWER_ROLES = ("reviewer", "admin")


class NotAllowedError(PixmoError, PermissionError):
    """The user may not do this (not logged in, not a reviewer, or inactive)."""


@dataclass(frozen=True)
class Reviewer:
    """A user allowed to curate: id, name and role, and what keeps this login alive (``login``: a
    server-side browser session for a password login, the token's hash for a token login)."""

    id: int
    username: str
    role: str
    login: str = field(default="", repr=False, compare=False)


def _as_reviewer(user: User | None, refusal: str) -> Reviewer:
    if user is None or not user.is_active:
        raise NotAllowedError(refusal)
    if user.role not in REVIEWER_ROLES:
        raise NotAllowedError(f"{user.username} is an {user.role}; the dashboard is for reviewers and admins")
    return Reviewer(user.id, user.username, user.role)


def login(db: Database, username: str, password: str, ip: str | None = None) -> Reviewer:
    """The reviewer with that name and password; NotAllowedError when wrong or not a reviewer.

    Every try is a ``login_attempts`` row and too many recent failures refuse further tries
    (the annotation app's limits, shared through the database), so the dashboard is no side door
    for guessing passwords. Takes the Database: the attempt is committed even when refused.
    """
    # read-then-write: take SQLite's write lock up front, as the app does
    with db.session(write_lock=True) as session:
        try:
            user = check_credentials(session, username, password, ip or "dashboard")
        except LoginThrottled as exc:
            raise NotAllowedError(str(exc)) from exc
        allowed = user is not None and user.is_active and user.role in REVIEWER_ROLES
        # a server-side session, as the app's: a logout, a new password or deactivation ends it
        key = f"session:{open_session(session, user).token}" if allowed else ""
    return replace(_as_reviewer(user, "wrong username or password"), login=key)  # after the attempt is committed


def login_with_token(db: Database, token: str) -> Reviewer:
    """The reviewer an API token belongs to; NotAllowedError when unknown or not a reviewer."""
    with db.session(write_lock=True) as session:  # records the token's last use
        user = user_for_token(session, token.strip())
    return replace(_as_reviewer(user, "unknown or revoked token"), login=f"token:{token_hash(token.strip())}")


def reviewer_by_id(session: Session, user_id: int | None) -> Reviewer:
    """Re-check a remembered user: they must still exist, be active and be a reviewer."""
    user = session.get(User, user_id) if user_id is not None else None
    return _as_reviewer(user, "log in as a reviewer first")


def reviewer_for_login(session: Session, user_id: int | None, login: str | None) -> Reviewer:
    """Re-check a remembered login: `reviewer_by_id`, and its session must still be open (not logged
    out, ended by a new password or deactivation) or its token not revoked."""
    reviewer = reviewer_by_id(session, user_id)
    kind, _, value = (login or "").partition(":")
    if kind == "session":
        found = session_user(session, value)
        alive = found is not None and found[0].id == reviewer.id
    elif kind == "token":
        alive = session.scalar(
            select(ApiToken.id).where(ApiToken.token_hash == value, ApiToken.user_id == reviewer.id)) is not None
    else:
        alive = False
    if not alive:
        raise NotAllowedError("this login has ended (logged out, password changed or token revoked); log in again")
    return replace(reviewer, login=login)


def logout(db: Database, login: str | None) -> None:
    """End a dashboard login (its server-side session; a token login simply stops being remembered)."""
    kind, _, value = (login or "").partition(":")
    if kind == "session":
        with db.session() as session:
            end_session(session, value)


def submit_review(
    session: Session, reviewer_id: int | None, target_type: str, target_id: int, verdict: str, reason: str = ""
) -> Review:
    """Write a verdict ("approved", "rejected" with a reason, or "flagged") on one item as a reviewer.

    Earlier verdicts stay as history; the newest one is the item's current verdict. Nobody reviews
    their own work.
    """
    reviewer = reviewer_by_id(session, reviewer_id)
    return add_review(session, reviewer.id, target_type, target_id, verdict, reason)
