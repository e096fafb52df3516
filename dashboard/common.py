"""What every dashboard page shares: the database and blob store, the logged-in reviewer,
the project picker and short-lived caches of the aggregate queries."""

from __future__ import annotations

import re
from typing import Any

import streamlit as st

from pixmo import curation
from pixmo.config import get_settings
from pixmo.db.session import Database, get_database
from pixmo.storage import BlobStore, open_store

USER_KEY = "pixmo_user_id"
LOGIN_KEY = "pixmo_login"  # the login's session token or token hash (curation.Reviewer.login)
ENDED_KEY = "pixmo_login_ended"  # why the last login ended, for the login page
BROWSE_IMAGE_KEY = "browse_image_id"
CACHE_TTL_S = 60  # aggregates over a million rows are worth caching for a minute


def database_url() -> str:
    return get_settings().resolved_database_url


def database() -> Database:
    return get_database(database_url())


@st.cache_resource(show_spinner=False)
def _store(url: str) -> BlobStore:
    return open_store(url)


def store() -> BlobStore:
    return _store(get_settings().resolved_storage_url)


def current_reviewer() -> curation.Reviewer | None:
    """The logged-in reviewer, re-checked against the database on every run (None: logged out)."""
    user_id = st.session_state.get(USER_KEY)
    if user_id is None:
        return None
    try:
        with database().session() as session:
            return curation.reviewer_for_login(session, user_id, st.session_state.get(LOGIN_KEY))
    except curation.NotAllowedError as exc:
        st.session_state.pop(USER_KEY, None)
        st.session_state.pop(LOGIN_KEY, None)
        st.session_state[ENDED_KEY] = str(exc)  # the login page says why (a form in hand is lost)
        return None


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def plain(text: str | None) -> str:
    """``text`` (captions, transcripts, reasons: written by people or models) escaped for st.markdown."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text or "")


def client_ip() -> str:
    """The browser's address for login throttling ("localhost" when Streamlit does not know it)."""
    ip = st.context.ip_address
    return ip if isinstance(ip, str) and ip else "localhost"


def remember(reviewer: curation.Reviewer) -> None:
    """Keep a login for the next runs of this browser session."""
    st.session_state[USER_KEY] = reviewer.id
    st.session_state[LOGIN_KEY] = reviewer.login


def logout() -> None:
    curation.logout(database(), st.session_state.pop(LOGIN_KEY, None))
    st.session_state.pop(USER_KEY, None)


def refresh_button() -> None:
    """A button that drops the cached aggregates, so the next run reads the database again."""
    if st.button("Refresh", help=f"Aggregates are cached for {CACHE_TTL_S} s"):
        st.cache_data.clear()


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def options(db_url: str) -> dict[str, Any]:
    with get_database(db_url).session() as session:
        return curation.filter_options(session)


def project_picker(key: str, label: str = "Project") -> int | None:
    """A select box of projects with an "All projects" entry; returns the project id or None."""
    projects = options(database_url())["projects"]
    names = {p["id"]: f"{p['name']} ({p['kind']})" for p in projects}
    choice = st.selectbox(label, [None, *names], format_func=lambda pid: "All projects" if pid is None else names[pid], key=key)
    return choice


def open_in_browse(image_id: int) -> None:
    """Go to the Browse page showing one image."""
    st.session_state[BROWSE_IMAGE_KEY] = int(image_id)
    st.switch_page("views/browse.py")
