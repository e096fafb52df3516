"""The `pixmo` command line: a thin layer, one library call per command.

This module is the composition root: it is the one place in ``pixmo`` that reaches into
``pipelines``, ``annotation_app`` and ``dashboard``, and only inside the commands that run them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

from pixmo.errors import PixmoError
from pixmo.richtext import plain

app = typer.Typer(help="PixMo toolkit: collect and curate PixMo-style vision-language data.", no_args_is_help=True)
user_app = typer.Typer(help="Manage users (annotators, reviewers, admins).", no_args_is_help=True)
project_app = typer.Typer(help="Manage projects (caption, points, ask, point_explain).", no_args_is_help=True)
ingest_app = typer.Typer(help="Bring images in: validate, dedupe by sha256, store.", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(project_app, name="project")
app.add_typer(ingest_app, name="ingest")

@app.callback()
def _on_start() -> None:
    # `docker compose stop` and process supervisors send SIGTERM: end like Ctrl-C (SystemExit runs
    # the finally blocks), so the running job's row is marked failed instead of left "running" for
    # good (a recreated container has another hostname, so no later run would reap it)
    import signal

    def _stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, _stop)
    except ValueError:  # not the main thread (an embedding program): leave its handlers alone
        pass


# Each further capability adds its commands in pixmo/commands/<name>.py with `register(app)`.
COMMAND_MODULES: list[str] = ["dashboard", "transcribe", "export", "app", "rewrite", "worker"]

# piped output (CI logs, `make run`) gets a wide console rather than rich's 80-column default
console = Console() if sys.stdout.isatty() else Console(width=160)
err = Console(stderr=True)


def _db():
    """The database of the settings, once it is known to be at this pixmo's schema: an empty or
    missing one (no `pixmo init` yet, a mistyped PIXMO_DATA_DIR), an older one, a server that does
    not answer or a bad setting is one line and exit 2, not a traceback (and no empty file made)."""
    from pydantic import ValidationError as SettingsError
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from pixmo.config import get_settings
    from pixmo.db.migrate import current_revision, head_revision
    from pixmo.db.session import get_database

    try:
        url = get_settings().resolved_database_url
        parsed = make_url(url)
    except SettingsError as exc:
        first = exc.errors()[0]
        _fail(f"setting {'.'.join(map(str, first['loc'])) or '?'}: {first['msg']}")
    except ArgumentError as exc:
        _fail(f"PIXMO_DATABASE_URL is not a database URL: {exc}")
    if url not in _CHECKED:
        where = _safe_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") \
                and not Path(parsed.database).exists():
            _fail(f"no database at {parsed.database}: run `pixmo init` (or set PIXMO_DATA_DIR / PIXMO_DATABASE_URL)")
        try:
            at = current_revision(url)
        except SQLAlchemyError as exc:
            _fail(f"cannot reach the database {where}: {str(exc.orig if hasattr(exc, 'orig') else exc).strip()}")
        if at is None:
            _fail(f"the database {where} is empty: run `pixmo init`")
        head = head_revision()
        if at != head:
            _fail(f"the database {where} is at schema revision {at}, this pixmo needs {head}: run `pixmo init`")
        _CHECKED.add(url)
    return get_database(url)


_CHECKED: set[str] = set()  # databases found at the newest schema in this process


def _store():
    from pixmo.storage import open_store

    return open_store()


def _fail(exc: Exception | str) -> NoReturn:
    err.print(f"[red]error:[/red] {plain(exc)}")  # the message may quote user text like "[/x] car"
    raise typer.Exit(2)


@app.command()
def init() -> None:
    """Create or upgrade the database to the newest schema and prepare the blob store."""
    from pixmo.config import get_settings
    from pixmo.db.migrate import current_revision, upgrade

    settings = get_settings()
    url = settings.resolved_database_url
    try:
        upgrade(url)
        store = _store()
        if hasattr(store, "ensure_bucket"):
            store.ensure_bucket()
    except PixmoError as exc:
        _fail(exc)
    console.print(f"database [bold]{plain(_safe_url(url))}[/bold] at revision {current_revision(url)}")
    console.print(f"blob store [bold]{plain(store.describe())}[/bold]")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@user_app.command("add")
def user_add(
    username: str,
    role: Annotated[str, typer.Option(help="annotator | reviewer | admin")] = "annotator",
    password: Annotated[Optional[str], typer.Option(help="Asked for when not given.")] = None,
) -> None:
    """Add a user with a password (argon2-hashed)."""
    from pixmo.auth import create_user

    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        with _db().session() as session:
            user = create_user(session, username, password, role)
            console.print(f"added {user.role} [bold]{user.username}[/bold] (id {user.id})")
    except PixmoError as exc:
        _fail(exc)


@user_app.command("list")
def user_list() -> None:
    """List users and their roles."""
    from sqlalchemy import select

    from pixmo.db.models import User

    table = Table("id", "username", "role", "active", "created")
    with _db().session() as session:
        for u in session.scalars(select(User).order_by(User.id)):
            table.add_row(str(u.id), u.username, u.role, "yes" if u.is_active else "no", f"{u.created_at:%Y-%m-%d}")
    console.print(table)


@user_app.command("token")
def user_token(username: str, name: Annotated[str, typer.Option(help="A label for the token.")] = "cli") -> None:
    """Create a bearer API token for a user (printed once; only its hash is stored)."""
    from pixmo.auth import create_token, get_user
    from pixmo.errors import ValidationError

    try:
        with _db().session() as session:
            user = get_user(session, username)
            if not user.is_active:
                raise ValidationError(f"{username} is deactivated; `pixmo user activate {username}` first")
            token = create_token(session, user, name)
    except PixmoError as exc:
        _fail(exc)
    typer.echo(token)


@user_app.command("tokens")
def user_tokens(username: str) -> None:
    """List a user's bearer tokens: label, created, last used (the tokens themselves are not stored)."""
    from pixmo.users import list_tokens

    table = Table("id", "label", "created", "last used")
    try:
        with _db().session() as session:
            for t in list_tokens(session, username):
                used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
                table.add_row(str(t.id), plain(t.name), f"{t.created_at:%Y-%m-%d %H:%M}", used)
    except PixmoError as exc:
        _fail(exc)
    console.print(table)


@user_app.command("revoke")
def user_revoke(
    username: str,
    label: Annotated[Optional[str], typer.Option("--label", help="Only the tokens with this label.")] = None,
) -> None:
    """Revoke a user's bearer tokens (all of them, or those with --label)."""
    from pixmo.users import revoke_tokens

    try:
        with _db().session(write_lock=True) as session:
            n = revoke_tokens(session, username, label)
    except PixmoError as exc:
        _fail(exc)
    console.print(f"revoked {n} token(s) of [bold]{username}[/bold]")


@user_app.command("deactivate")
def user_deactivate(username: str) -> None:
    """Deactivate a user: no login; browser sessions ended, tokens revoked, live leases released."""
    from pixmo.users import deactivate_user

    try:
        with _db().session(write_lock=True) as session:
            d = deactivate_user(session, username)
    except PixmoError as exc:
        _fail(exc)
    console.print(f"deactivated [bold]{username}[/bold]: {d.sessions_ended} session(s) ended, "
                  f"{d.tokens_revoked} token(s) revoked, {d.leases_released} lease(s) released")


@user_app.command("activate")
def user_activate(username: str) -> None:
    """Let a deactivated user log in again (their old tokens stay revoked)."""
    from pixmo.users import activate_user

    try:
        with _db().session(write_lock=True) as session:
            activate_user(session, username)
    except PixmoError as exc:
        _fail(exc)
    console.print(f"activated [bold]{username}[/bold]")


@user_app.command("role")
def user_role(username: str, role: Annotated[str, typer.Argument(help="annotator | reviewer | admin")]) -> None:
    """Give a user another role (the last active admin cannot be demoted)."""
    from pixmo.users import set_role

    try:
        with _db().session(write_lock=True) as session:
            set_role(session, username, role)
    except PixmoError as exc:
        _fail(exc)
    console.print(f"[bold]{username}[/bold] is now {role}")


@user_app.command("password")
def user_password(
    username: str,
    password: Annotated[Optional[str], typer.Option(help="Asked for when not given.")] = None,
) -> None:
    """Set a user's password and end their browser sessions."""
    from pixmo.users import set_password

    if password is None:
        password = typer.prompt("new password", hide_input=True, confirmation_prompt=True)
    try:
        with _db().session(write_lock=True) as session:
            _, ended = set_password(session, username, password)
    except PixmoError as exc:
        _fail(exc)
    console.print(f"password of [bold]{username}[/bold] changed; {ended} session(s) ended")


@project_app.command("create")
def project_create(
    name: str,
    kind: Annotated[str, typer.Option(help="caption | points | ask | point_explain")] = "caption",
    instructions: Annotated[str, typer.Option(help="Shown to annotators.")] = "",
    min_seconds: Annotated[float, typer.Option(help="Shortest accepted recording.")] = 60.0,
    max_seconds: Annotated[float, typer.Option(help="Longest accepted recording.")] = 90.0,
    overlap: Annotated[int, typer.Option(help="Distinct annotators per image.")] = 1,
    label: Annotated[Optional[list[str]], typer.Option(help="A label for pointing (repeat).")] = None,
    gold_fraction: Annotated[float, typer.Option(help="Share of gold items mixed in.")] = 0.0,
    language: Annotated[str, typer.Option(help="Spoken language (a Whisper code: en, de, ...); pixmo transcribe pins it.")] = "en",
    max_points: Annotated[int, typer.Option(help="Most points in one answer.")] = 100,
    lease_minutes: Annotated[float, typer.Option(help="How long an annotator holds a task.")] = 30.0,
) -> None:
    """Create a project."""
    from pixmo.projects import create_project

    try:
        with _db().session() as session:
            p = create_project(
                session, name, kind, instructions, min_seconds=min_seconds, max_seconds=max_seconds,
                overlap=overlap, labels=label or [], gold_fraction=gold_fraction, language=language,
                max_points=max_points, lease_minutes=lease_minutes,
            )
            console.print(f"created {p.kind} project [bold]{plain(p.name)}[/bold] (id {p.id})")
    except PixmoError as exc:
        _fail(exc)


@project_app.command("list")
def project_list() -> None:
    """List projects with their image counts."""
    from pixmo.projects import list_projects

    table = Table("id", "name", "kind", "images", "overlap", "seconds")
    with _db().session() as session:
        for p, n in list_projects(session):
            cfg = p.config or {}
            table.add_row(str(p.id), plain(p.name), p.kind, str(n), str(cfg.get("overlap", "")),
                          f"{cfg.get('min_seconds', '')}-{cfg.get('max_seconds', '')}")
    console.print(table)


@project_app.command("gold")
def project_gold(
    project: Annotated[str, typer.Argument(help="Project name.")],
    image: Annotated[str, typer.Argument(help="Image id or sha256 (attached to the project).")],
    answer: Annotated[Optional[str], typer.Option(
        help='Expected points: \'{"points": {"red circle": [[0.25, 0.4]], "dog": []}}\' (normalised 0-1; [] not present).')] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the answer (the image stays a gold item).")] = False,
) -> None:
    """Make an image a gold (check) item of a points project, with the answer its point sets are scored against."""
    from pixmo.project_images import find_image, set_gold_answer
    from pixmo.projects import get_project

    if (answer is None) == (not clear):
        _fail(ValueError("give --answer JSON, or --clear"))
    try:
        value = None if clear else json.loads(answer)
    except json.JSONDecodeError as exc:
        _fail(ValueError(f"--answer is not JSON: {exc}"))
    if value is None and not clear:
        _fail(ValueError("--answer null: use --clear to remove the answer"))
    try:
        with _db().session(write_lock=True) as session:
            p = get_project(session, project)
            row = set_gold_answer(session, p, find_image(session, image), value)
            image_id, name, shown = row.image_id, p.name, json.dumps(row.gold_answer) if row.gold_answer else "none"
    except PixmoError as exc:
        _fail(exc)
    console.print(f"image {image_id} of [bold]{plain(name)}[/bold] is a gold item; answer: {plain(shown)}")


@ingest_app.command("folder")
def ingest_folder_cmd(
    path: Annotated[Path, typer.Argument(help="Folder to walk (recursively).")],
    project: Annotated[Optional[str], typer.Option(help="Attach the images to this project.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker threads (decoding and blob writes overlap).")] = 4,
    json_out: Annotated[bool, typer.Option("--json", help="Print the stats as JSON.")] = False,
) -> None:
    """Validate every file below PATH with Pillow, dedupe by sha256, store the good images."""
    from pipelines.base import stats_table
    from pipelines.ingest import ingest_folder
    from pixmo.config import get_settings

    try:
        stats = ingest_folder(_db(), _store(), path, project, progress=not json_out, workers=workers,
                              max_pixels=get_settings().max_image_pixels)
    except PixmoError as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps(stats, indent=2))
    else:
        console.print(stats_table(f"ingest {path} (job {stats['job_id']})", stats))


@app.command()
def stats(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show what has been collected, overall and per project."""
    from pixmo.stats import collect_stats

    with _db().session() as session:
        data = collect_stats(session)
    if json_out:
        typer.echo(json.dumps(data, indent=2))
        return
    totals = Table("what", "count", title="totals")
    for k, v in data["totals"].items():
        totals.add_row(k, str(v))
    console.print(totals)
    per = Table("project", "kind", "images", "submitted", "leased", "recordings", "captions", "point sets", "QA",
                title="projects")
    for p in data["projects"]:
        a = p["assignments"]
        per.add_row(plain(p["name"]), p["kind"], str(p["images"]), str(a.get("submitted", 0)), str(a.get("leased", 0)),
                    str(p["recordings"]), str(p["captions"]), str(p["point_sets"]), str(p["qa_pairs"]))
    console.print(per)


@app.command()
def demo(
    images: Annotated[int, typer.Option(min=1, help="How many images (photos first, then generated).")] = 12,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    speech: Annotated[bool, typer.Option(help="Speak transcripts with espeak-ng when installed.")] = True,
) -> None:
    """Create demo projects with real photos, generated images and synthetic annotations of every kind."""
    from pixmo.demo import create_demo

    try:
        result = create_demo(_db(), _store(), images, seed=seed, speech=speech)
    except PixmoError as exc:
        _fail(exc)
    made = ", ".join(f"{v} {k}" for k, v in result["created"].items())
    console.print(f"demo: {result['images']} images in the demo projects; created {made}")
    console.print(f"demo users: {', '.join(result['users'])} (password: {result['password']})")


def _register_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"pixmo.commands.{name}").register(app)


_register_commands()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
