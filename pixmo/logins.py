"""Browser logins: server-side sessions (revocable) and login rate limiting, both in the database.

The cookie carries a random token; the ``web_sessions`` table holds only its sha256, the user and
the session's CSRF token, so logging out (or deactivating a user) ends the session everywhere.
Failed logins are rows of ``login_attempts``; keeping them in the database (not in process memory)
makes the limit hold across several app replicas.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from pixmo.auth import authenticate, token_hash
from pixmo.db.models import LoginAttempt, User, WebSession, as_utc, utcnow
from pixmo.errors import PixmoError

SESSION_TTL = dt.timedelta(hours=12)
FAILURE_WINDOW = dt.timedelta(minutes=15)
MAX_FAILURES_PER_USER_IP = 5
MAX_FAILURES_PER_IP = 50
ATTEMPTS_KEPT = dt.timedelta(days=1)


class LoginThrottled(PixmoError):
    """Too many failed logins; ``retry_after`` says how many seconds to wait."""

    def __init__(self, retry_after: int):
        super().__init__(f"too many failed logins; try again in {retry_after} seconds")
        self.retry_after = retry_after


@dataclass(frozen=True)
class LoginResult:
    user: User
    token: str  # goes into the cookie; shown nowhere else
    csrf_token: str
    expires_at: dt.datetime


def check_throttle(session: Session, username: str, ip: str, now: dt.datetime | None = None) -> None:
    """Raise LoginThrottled when ``username`` from ``ip`` (or ``ip`` alone) failed too often lately."""
    now = now or utcnow()
    since = now - FAILURE_WINDOW
    last_ok = session.scalar(
        select(func.max(LoginAttempt.created_at)).where(
            LoginAttempt.username == username, LoginAttempt.ip == ip, LoginAttempt.ok.is_(True)
        )
    )
    if last_ok is not None and as_utc(last_ok) > since:
        since = as_utc(last_ok)
    failures = select(LoginAttempt.created_at).where(LoginAttempt.ok.is_(False), LoginAttempt.created_at > since)
    for stmt, limit in (
        (failures.where(LoginAttempt.username == username, LoginAttempt.ip == ip), MAX_FAILURES_PER_USER_IP),
        (failures.where(LoginAttempt.ip == ip), MAX_FAILURES_PER_IP),
    ):
        times = sorted(as_utc(t) for t in session.scalars(stmt.order_by(LoginAttempt.created_at.desc()).limit(limit)))
        if len(times) >= limit:
            wait = times[0] + FAILURE_WINDOW - now
            raise LoginThrottled(max(1, int(wait.total_seconds()) + 1))


def _serialise_per_ip(session: Session, ip: str) -> None:
    """Logins from one address wait for each other until their transactions end (PostgreSQL).

    Otherwise parallel tries would all count the failures before any of them is written and all get
    through: as many guesses as an attacker can send at once. SQLite's callers hold its one write
    lock already (``write_lock=True``).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"pixmo-login|{ip}"})


def check_credentials(
    session: Session, username: str, password: str, ip: str | None, now: dt.datetime | None = None
) -> User | None:
    """The user with that name and password, or None; every try is a ``login_attempts`` row.

    Raises LoginThrottled (before checking the password) after too many recent failures. The one
    password check of the app and the dashboard.
    """
    now = now or utcnow()
    # no name or password holds a NUL (PostgreSQL's text cannot): such a try is a failure, recorded without it
    has_nul = "\0" in username or "\0" in password
    username = username.replace("\0", "").strip()[:64]
    ip = (ip or "unknown").replace("\0", "")[:64]
    _serialise_per_ip(session, ip)
    check_throttle(session, username, ip, now)
    user = None if has_nul else authenticate(session, username, password)
    session.add(LoginAttempt(username=username, ip=ip, ok=user is not None, created_at=now))
    if user is None:
        session.flush()
        return None
    # attempts older than a day matter to no limit any more
    session.execute(delete(LoginAttempt).where(LoginAttempt.created_at < now - ATTEMPTS_KEPT))
    return user


def login(session: Session, username: str, password: str, ip: str, now: dt.datetime | None = None) -> LoginResult | None:
    """Check the password and open a session; None on a wrong name or password.

    Raises LoginThrottled (before checking the password) after too many recent failures.
    """
    now = now or utcnow()
    user = check_credentials(session, username, password, ip, now)
    return None if user is None else open_session(session, user, now)


def open_session(session: Session, user: User, now: dt.datetime | None = None) -> LoginResult:
    """A new browser session for ``user``."""
    now = now or utcnow()
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires = now + SESSION_TTL
    session.add(WebSession(token_hash=token_hash(token), user_id=user.id, csrf_token=csrf, expires_at=expires))
    # expired sessions of this user are garbage now
    session.execute(delete(WebSession).where(WebSession.user_id == user.id, WebSession.expires_at <= now))
    session.flush()
    return LoginResult(user, token, csrf, expires)


def session_user(session: Session, token: str, now: dt.datetime | None = None) -> tuple[User, WebSession] | None:
    """The active user and session row behind a cookie token, or None when unknown or expired."""
    if not token or len(token) > 128:
        return None
    now = now or utcnow()
    row = session.scalars(select(WebSession).where(WebSession.token_hash == token_hash(token))).first()
    if row is None or as_utc(row.expires_at) <= now:
        return None
    user = session.get(User, row.user_id)
    if user is None or not user.is_active:
        return None
    return user, row


def end_session(session: Session, token: str) -> None:
    """Log out: forget the session behind ``token`` (unknown tokens are ignored)."""
    if token:
        session.execute(delete(WebSession).where(WebSession.token_hash == token_hash(token)))
