"""`pixmo dashboard`: start the Streamlit curation dashboard."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer


def app_path() -> Path:
    """``dashboard/app.py``, found without importing the dashboard (and Streamlit) here."""
    spec = importlib.util.find_spec("dashboard")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "app.py"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("dashboard/app.py is not installed next to the pixmo package")


def register(app: typer.Typer) -> None:
    """Add the `dashboard` command to the CLI."""

    @app.command()
    def dashboard(
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8501,
        host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    ) -> None:
        """Start the curation dashboard (Streamlit, headless) for reviewers and admins."""
        from pixmo.curation.serve import serve_dashboard
        from pixmo.errors import PixmoError

        typer.echo(f"PixMo dashboard on http://{host}:{port} (Ctrl-C stops it)")
        try:
            serve_dashboard(app_path(), host=host, port=port)
        except (PixmoError, FileNotFoundError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
