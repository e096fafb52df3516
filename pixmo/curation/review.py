"""Review actions: reviewers (and admins) approve, reject with a reason, or flag any submission.

Every call re-reads the acting user from the database, so a deactivated reviewer or an annotator
cannot write a verdict whatever a client remembers about them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from pixmo.auth import user_for_token
from pixmo.db.models import Review, User
from pixmo.db.session import Database
from pixmo.errors import PixmoError
from pixmo.logins import LoginThrottled, check_credentials
from pixmo.reviews import add_review

REVIEWER_ROLES = ("reviewer", "admin")


class NotAllowedError(PixmoError, PermissionError):
    """The user may not do this (not logged in, not a reviewer, or inactive)."""


@dataclass(frozen=True)
class Reviewer:
    """A user allowed to curate: id, name and role."""

    id: int
    username: str
    role: str


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
    return _as_reviewer(user, "wrong username or password")  # after the attempt is committed


def login_with_token(db: Database, token: str) -> Reviewer:
    """The reviewer an API token belongs to; NotAllowedError when unknown or not a reviewer."""
    with db.session(write_lock=True) as session:  # records the token's last use
        user = user_for_token(session, token.strip())
    return _as_reviewer(user, "unknown or revoked token")


def reviewer_by_id(session: Session, user_id: int | None) -> Reviewer:
    """Re-check a remembered login: the user must still exist, be active and be a reviewer."""
    user = session.get(User, user_id) if user_id is not None else None
    return _as_reviewer(user, "log in as a reviewer first")


def submit_review(
    session: Session, reviewer_id: int | None, target_type: str, target_id: int, verdict: str, reason: str = ""
) -> Review:
    """Write a verdict ("approved", "rejected" with a reason, or "flagged") on one item as a reviewer.

    Earlier verdicts stay as history; the newest one is the item's current verdict. Nobody reviews
    their own work.
    """
    reviewer = reviewer_by_id(session, reviewer_id)
    return add_review(session, reviewer.id, target_type, target_id, verdict, reason)
