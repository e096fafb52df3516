"""Account administration: deactivate and reactivate users, change roles and passwords, revoke tokens.

Deactivating a user takes effect at once everywhere: their browser sessions are ended, their
bearer tokens revoked (a reactivated user gets new ones) and their live leases handed back so the
images return to the pool; their submissions, recordings and reviews stay. A deactivated user
cannot log in. The last active admin can be neither deactivated nor demoted, so an installation
always keeps someone who can administer it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from pixmo.auth import get_user, hash_password
from pixmo.db.models import ROLES, ApiToken, Assignment, User, WebSession, utcnow
from pixmo.errors import NotFoundError, ValidationError


@dataclass(frozen=True)
class Deactivated:
    """What deactivating a user ended."""

    user: User
    sessions_ended: int
    tokens_revoked: int
    leases_released: int


def user_by_id(session: Session, user_id: int) -> User:
    """The user with this id; NotFoundError when there is none."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"no user with id {user_id}")
    return user


def _keep_an_admin(session: Session, user: User, what: str) -> None:
    """Refuse to take the last active admin away (ValidationError)."""
    if user.role != "admin" or not user.is_active:
        return
    # locked (PostgreSQL): two admins demoting each other at once must not both pass the count
    admins = session.scalars(
        select(User.id).where(User.role == "admin", User.is_active.is_(True)).order_by(User.id).with_for_update()
    ).all()
    if admins == [user.id]:
        raise ValidationError(f"{user.username!r} is the only active admin and cannot be {what}; "
                              "make another user admin first")


def end_sessions(session: Session, user: User) -> int:
    """Log ``user`` out of every browser; returns how many sessions were ended."""
    return session.execute(delete(WebSession).where(WebSession.user_id == user.id)).rowcount


def revoke_tokens(session: Session, username: str, name: str | None = None) -> int:
    """Revoke the user's bearer tokens (only those labelled ``name`` when given); returns how many."""
    user = get_user(session, username)
    stmt = delete(ApiToken).where(ApiToken.user_id == user.id)
    if name is not None:
        stmt = stmt.where(ApiToken.name == name)
    return session.execute(stmt).rowcount


def list_tokens(session: Session, username: str) -> list[ApiToken]:
    """The user's bearer tokens (label, created, last used), oldest first; the tokens themselves are not stored."""
    user = get_user(session, username)
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)))


def deactivate_user(session: Session, username: str) -> Deactivated:
    """Deactivate a user: no login, sessions ended, tokens revoked, live leases released."""
    user = get_user(session, username)
    _keep_an_admin(session, user, "deactivated")
    user.is_active = False
    sessions = end_sessions(session, user)
    tokens = revoke_tokens(session, username)
    leases = session.execute(
        update(Assignment)
        .where(Assignment.user_id == user.id, Assignment.status == "leased", Assignment.expires_at > utcnow())
        .values(status="expired")
    ).rowcount
    session.flush()
    return Deactivated(user, sessions, tokens, leases)


def activate_user(session: Session, username: str) -> User:
    """Let a deactivated user log in again (with their old password; tokens must be made anew)."""
    user = get_user(session, username)
    user.is_active = True
    session.flush()
    return user


def set_role(session: Session, username: str, role: str) -> User:
    """Give a user another role (it applies from their next request)."""
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    user = get_user(session, username)
    if role != "admin":
        _keep_an_admin(session, user, f"made {role}")
    user.role = role
    session.flush()
    return user


def set_password(session: Session, username: str, password: str) -> tuple[User, int]:
    """Set a new password and end the user's browser sessions (the old password may be known
    to someone else); returns the user and how many sessions were ended."""
    user = get_user(session, username)
    user.password_hash = hash_password(password)
    ended = end_sessions(session, user)
    session.flush()
    return user, ended


def update_user(
    session: Session, username: str, *, role: str | None = None, is_active: bool | None = None,
    password: str | None = None,
) -> User:
    """Apply an admin's changes to a user (each left as it is when None); see the functions above."""
    user = get_user(session, username)
    if role not in (None, "admin") or is_active is False:
        # the admin rows first, before any write locks the user's row: two admins changing the same
        # user at once must queue here, not each hold a lock the other waits for (a deadlock)
        _keep_an_admin(session, user, "deactivated" if is_active is False else f"made {role}")
    if password is not None:
        set_password(session, username, password)
    if role is not None and role != user.role:
        set_role(session, username, role)
    if is_active is False and user.is_active:
        deactivate_user(session, username)
    elif is_active and not user.is_active:
        activate_user(session, username)
    return user
