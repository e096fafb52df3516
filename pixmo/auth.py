"""Users, passwords (argon2) and API tokens (stored as sha256)."""

from __future__ import annotations

import hashlib
import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pixmo.db.models import ROLES, ApiToken, User, utcnow
from pixmo.errors import NotFoundError, ValidationError

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    if len(password) < 8:
        raise ValidationError("a password needs at least 8 characters")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches ``password_hash``."""
    if not password_hash:
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def create_user(session: Session, username: str, password: str | None, role: str = "annotator") -> User:
    """Add a user; ValidationError on a bad role, a taken or malformed name."""
    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    username = username.strip()
    if not username or len(username) > 64 or not username.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValidationError(f"username {username!r} must be 1-64 letters, digits, '-', '_' or '.'")
    if session.scalars(select(User).where(User.username == username)).first():
        raise ValidationError(f"user {username!r} exists already")
    # only None is "no password" (a token-only account): an empty one is checked like any other
    user = User(username=username, role=role, password_hash=hash_password(password) if password is not None else None)
    try:
        with session.begin_nested():  # another admin may have taken the name since the check above
            session.add(user)
    except IntegrityError:
        raise ValidationError(f"user {username!r} exists already") from None
    return user


def get_user(session: Session, username: str) -> User:
    user = session.scalars(select(User).where(User.username == username)).first()
    if user is None:
        raise NotFoundError(f"no user named {username!r}")
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with that name and password, or None.

    The user's row stays locked (PostgreSQL) until the caller's transaction ends: a password change
    meanwhile waits, then ends the session this login opens, instead of missing it (not committed
    yet) and leaving the old password's session alive, or being undone by a rehash of the old one.
    """
    user = session.scalars(select(User).where(User.username == username).with_for_update()).first()
    if user is None or not user.is_active or not user.password_hash:
        # spend the same time as a real check so names (and password-less accounts) cannot be
        # probed by timing
        verify_password(_dummy_hash(), password)
        return None
    if not verify_password(user.password_hash, password):
        return None
    if _hasher.check_needs_rehash(user.password_hash):  # made with weaker parameters than today's
        user.password_hash = hash_password(password)
    return user


def token_hash(token: str) -> str:
    """What is stored of a bearer or session token: its sha256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, user: User, name: str = "default") -> str:
    """A new bearer token for ``user``; only its hash is stored, so show it once."""
    token = "pixmo_" + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name, token_hash=token_hash(token)))
    session.flush()
    return token


def user_for_token(session: Session, token: str) -> User | None:
    """The active user a bearer token belongs to, or None."""
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == token_hash(token))).first()
    if row is None or not row.user.is_active:
        return None
    row.last_used_at = utcnow()
    return row.user


@cache
def _dummy_hash() -> str:
    return _hasher.hash("not-a-real-password")
