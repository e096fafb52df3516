"""`pixmo serve`: run the annotation web app (FastAPI + uvicorn)."""

from __future__ import annotations

from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    reload: Annotated[bool, typer.Option(help="Restart when the code changes (development).")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (ignored with --reload).")] = 1,
    forwarded_allow_ips: Annotated[str | None, typer.Option(
        envvar="FORWARDED_ALLOW_IPS",
        help="Proxies whose X-Forwarded-For/-Proto are trusted (comma-separated IPs or networks); behind a "
             "reverse proxy, its address, else every login seems to come from it and shares one rate limit.",
    )] = None,
) -> None:
    """Run the annotation web app on the configured database and blob store (docs at /docs)."""
    import uvicorn

    from pixmo.config import get_settings
    from pixmo.errors import PixmoError

    try:
        get_settings().require_secret()
    except PixmoError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    uvicorn.run("annotation_app.main:create_app", factory=True, host=host, port=port, reload=reload,
                workers=None if reload else workers, proxy_headers=True,
                forwarded_allow_ips=forwarded_allow_ips or "127.0.0.1", log_level="info")
