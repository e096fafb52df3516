"""Starting the Streamlit dashboard: the command line and the environment it runs with."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pixmo.config import Settings, get_settings
from pixmo.errors import ConfigError


def streamlit_command(app_path: Path, host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    """``python -m streamlit run APP`` headless on ``host:port``, without usage statistics."""
    return [
        sys.executable, "-m", "streamlit", "run", str(app_path),
        "--server.headless", "true",
        "--server.address", host,
        "--server.port", str(port),
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
        "--server.fileWatcherType", "none",
    ]


def dashboard_env(app_path: Path, settings: Settings | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the dashboard process: the caller's, plus the resolved database and
    storage URLs (so relative paths mean what they meant here) and the project root on PYTHONPATH."""
    settings = settings or get_settings()
    env = dict(os.environ if base is None else base)
    env["PIXMO_DATABASE_URL"] = settings.resolved_database_url
    env["PIXMO_STORAGE_URL"] = settings.resolved_storage_url
    root = str(Path(app_path).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def serve_dashboard(app_path: Path, host: str = "127.0.0.1", port: int = 8501) -> None:
    """Replace this process with the Streamlit server for ``app_path`` (returns only on error)."""
    try:
        import streamlit  # noqa: F401
    except ImportError as exc:
        raise ConfigError("the dashboard needs Streamlit: pip install 'pixmo-toolkit[dashboard]'") from exc
    if not 0 < port < 65536:
        raise ConfigError(f"port {port} is out of range")
    cmd = streamlit_command(app_path, host, port)
    os.execve(cmd[0], cmd, dashboard_env(app_path))
