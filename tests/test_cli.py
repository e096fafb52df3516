"""The `pixmo` CLI end to end, in a subprocess-free way (typer's CliRunner) on the embedded defaults."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pixmo.cli import app
from tests.images import mixed_folder

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result


@pytest.fixture
def initialised(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from pixmo.db.session import _databases

    _databases.clear()
    assert invoke("init").exit_code == 0
    yield tmp_path
    for database in _databases.values():
        database.dispose()
    _databases.clear()


@pytest.mark.parametrize(
    "cmd",
    [[], ["init"], ["user", "add"], ["user", "list"], ["user", "token"], ["user", "tokens"], ["user", "revoke"],
     ["user", "deactivate"], ["user", "activate"], ["user", "role"], ["user", "password"], ["project", "create"],
     ["project", "list"], ["project", "gold"],
     ["ingest", "folder"], ["stats"], ["demo"], ["worker"]],
)
def test_every_command_has_help(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_users_projects_ingest_stats(initialised):
    assert invoke("user", "add", "alice", "--role", "reviewer", "--password", "correct-horse").exit_code == 0
    dup = invoke("user", "add", "alice", "--password", "correct-horse")
    assert dup.exit_code == 2 and "exists already" in dup.output
    assert "alice" in invoke("user", "list").output
    token = invoke("user", "token", "alice").output.strip()
    assert token.startswith("pixmo_")

    assert invoke("project", "create", "caps", "--kind", "caption").exit_code == 0
    bad = invoke("project", "create", "x", "--kind", "video")
    assert bad.exit_code == 2 and "kind must be one of" in bad.output
    # every setting the docs list can be given here (language, max points and lease used to be API-only)
    made = invoke("project", "create", "de-caps", "--language", "DE", "--max-points", "5", "--lease-minutes", "10")
    assert made.exit_code == 0, made.output
    from pixmo.cli import _db
    from pixmo.projects import get_project, project_config

    with _db().session() as session:
        cfg = project_config(get_project(session, "de-caps"))
    assert (cfg.language, cfg.max_points, cfg.lease_minutes) == ("de", 5, 10.0)
    bad = invoke("project", "create", "y", "--language", "german")
    assert bad.exit_code == 2 and "a language is a Whisper code" in bad.output

    mixed_folder(initialised / "imgs")
    out = invoke("ingest", "folder", str(initialised / "imgs"), "--project", "caps", "--json")
    stats = json.loads(out.output)
    assert stats["statuses"]["stored"] == 3 and stats["reasons"]["truncated"] == 1
    table = invoke("ingest", "folder", str(initialised / "imgs"), "--project", "caps").output
    assert "exists" in table and "decompression_bomb" in table

    data = json.loads(invoke("stats", "--json").output)
    assert data["totals"]["images"] == 3
    assert data["projects"][0]["name"] == "caps" and data["projects"][0]["images"] == 3
    assert "caps" in invoke("project", "list").output


def test_user_administration(initialised):
    assert invoke("user", "add", "boss", "--role", "admin", "--password", "correct-horse").exit_code == 0
    assert invoke("user", "add", "ann", "--password", "correct-horse").exit_code == 0
    for label in ("laptop", "ci"):
        assert invoke("user", "token", "ann", "--name", label).output.startswith("pixmo_")
    listed = invoke("user", "tokens", "ann").output
    assert "laptop" in listed and "ci" in listed and "never" in listed
    assert "revoked 1 token(s)" in invoke("user", "revoke", "ann", "--label", "ci").output
    assert "ci" not in invoke("user", "tokens", "ann").output.replace("id ", "")
    out = invoke("user", "deactivate", "ann").output
    assert "deactivated ann: 0 session(s) ended, 1 token(s) revoked, 0 lease(s) released" in " ".join(out.split())
    assert "ann" in invoke("user", "list").output and " no " in invoke("user", "list").output
    refused = invoke("user", "deactivate", "boss")
    assert refused.exit_code == 2 and "only active admin" in refused.output
    refused = invoke("user", "role", "boss", "reviewer")
    assert refused.exit_code == 2 and "only active admin" in refused.output
    refused = invoke("user", "token", "ann")
    assert refused.exit_code == 2 and "ann is deactivated" in refused.output
    assert invoke("user", "activate", "ann").exit_code == 0
    assert invoke("user", "role", "ann", "reviewer").exit_code == 0
    assert invoke("user", "password", "ann", "--password", "short").exit_code == 2
    assert "password of ann changed" in invoke("user", "password", "ann", "--password", "another-horse").output
    assert invoke("user", "deactivate", "ghost").exit_code == 2
    from pixmo.auth import authenticate
    from pixmo.config import get_settings
    from pixmo.db.session import get_database

    with get_database(get_settings().resolved_database_url).session() as s:
        user = authenticate(s, "ann", "another-horse")
        assert user is not None and user.role == "reviewer" and user.is_active


def test_worker_once(initialised):
    from pixmo.config import get_settings
    from pixmo.db.models import Job
    from pixmo.db.session import get_database
    from sqlalchemy import func, select

    idle = invoke("worker", "--once")
    assert idle.exit_code == 0 and "transcribe, clean, merge once" in idle.output
    bad = invoke("worker", "--once", "--steps", "transcribe,translate")
    assert bad.exit_code == 2 and "unknown step(s) translate" in bad.output
    misspelt = invoke("worker", "--once", "--project", "nope")  # refused at once, not every round
    assert misspelt.exit_code == 2 and "no project named 'nope'" in misspelt.output
    failed = invoke("worker", "--once", "--steps", "transcribe", "--asr-backend", "nope", "--json")
    assert failed.exit_code == 1
    line = json.loads(failed.output)
    assert line["step"] == "transcribe" and line["status"] == "failed" and "unknown ASR backend 'nope'" in line["error"]
    with get_database(get_settings().resolved_database_url).session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0  # idle and refused steps leave no job


def test_demo_makes_every_kind_of_annotation(initialised):
    result = invoke("demo", "--images", "6", "--no-speech")
    assert result.exit_code == 0, result.output
    data = json.loads(invoke("stats", "--json").output)
    totals = data["totals"]
    assert totals["images"] == 6
    for kind in ("recordings", "transcripts", "captions", "point_sets", "qa_pairs", "reviews"):
        assert totals[kind] > 0, kind
    assert {p["name"] for p in data["projects"]} == {"demo-captions", "demo-points", "demo-ask", "demo-explain"}
    # a second run tops up nothing: same images, same annotations
    invoke("demo", "--images", "6", "--no-speech")
    assert json.loads(invoke("stats", "--json").output)["totals"] == totals


def test_demo_reviews_reach_the_assignments(initialised):
    from sqlalchemy import select

    from pixmo.db.models import Assignment, Recording, Review
    from pixmo.db.session import _databases

    invoke("demo", "--images", "6", "--no-speech")
    (database,) = _databases.values()
    with database.session() as s:
        reviewed = s.execute(
            select(Review.verdict, Assignment.review_verdict)
            .join(Recording, Recording.id == Review.target_id)
            .join(Assignment, Assignment.id == Recording.assignment_id)
        ).all()
    assert reviewed and all(verdict == on_assignment for verdict, on_assignment in reviewed)


def test_summary_table_puts_each_reason_under_its_status():
    from rich.console import Console

    from pipelines.base import StageStats, stats_table

    stats = StageStats()
    for status, reason, ref in [("stored", None, None), ("rejected", "empty", "a.png"), ("stored", None, None),
                                ("rejected", "not_an_image", "b.txt"), ("failed", "io", "c.jpg")]:
        stats.record(status, reason, ref)
    data = stats.as_dict()
    assert data["reasons_by_status"] == {"failed": {"io": 1}, "rejected": {"empty": 1, "not_an_image": 1}}
    console = Console(record=True, width=100)
    console.print(stats_table("ingest", data))
    rows = [line.split("│")[1].strip() for line in console.export_text().splitlines() if line.count("│") >= 3]
    rows = [r for r in rows if r and r != "status / reason"]
    assert rows == ["failed", "io", "rejected", "empty", "not_an_image", "stored"]


def test_user_text_with_rich_markup_brackets_is_shown_not_read_as_markup(initialised):
    """'[/old]' in a project or file name was read as a closing markup tag: project list and stats
    failed every time, and an ingest failed at its summary after committing its work."""
    made = invoke("project", "create", "cats [/old]")
    assert made.exit_code == 0 and "cats [/old]" in made.output
    assert "cats [/old]" in invoke("project", "list").output
    assert "cats [/old]" in invoke("stats").output
    folder = initialised / "in"
    folder.mkdir()
    (folder / "notes [").mkdir()
    (folder / "notes [" / "draft].txt").write_text("not an image")  # listed as "notes [/draft].txt"
    out = invoke("ingest", "folder", str(folder), "--project", "cats [/old]")
    assert out.exit_code == 0 and "notes [/draft].txt" in out.output.replace("\n", "")


def test_commands_before_init_or_on_a_bad_database_say_so_in_one_line(tmp_path, monkeypatch):
    """Without `pixmo init` every command printed a 100-line traceback ("no such table: users") and
    left an empty pixmo.db in the (maybe mistyped) folder; a bad URL or a server down did the same."""
    from typer.testing import CliRunner

    from pixmo.cli import app
    from pixmo.config import get_settings

    runner = CliRunner()
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("PIXMO_DATA_DIR", str(fresh))
    get_settings.cache_clear()
    for args in (["user", "list"], ["project", "list"], ["stats"], ["export", "webdataset", str(tmp_path / "out")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "run `pixmo init`" in res.output and "Traceback" not in res.output, (args, res.output)
    assert not (fresh / "pixmo.db").exists()
    fresh.mkdir()
    (fresh / "pixmo.db").write_bytes(b"")  # there, but empty
    res = runner.invoke(app, ["user", "list"])
    assert res.exit_code == 2 and "is empty: run `pixmo init`" in res.output
    assert runner.invoke(app, ["init"]).exit_code == 0
    assert runner.invoke(app, ["user", "list"]).exit_code == 0
    for url, said in (("notaurl", "not a database URL"), ("postgresql+psycopg://nobody@127.0.0.1:1/x", "cannot reach the database")):
        monkeypatch.setenv("PIXMO_DATABASE_URL", url)
        get_settings.cache_clear()
        res = runner.invoke(app, ["user", "list"])
        assert res.exit_code == 2 and said in res.output and "Traceback" not in res.output, res.output
    get_settings.cache_clear()


@pytest.mark.parametrize("args", [["transcribe", "--beam-size", "0"], ["transcribe", "--batch-size", "0"],
                                  ["transcribe", "--workers", "0"], ["transcribe", "files", "x.wav", "--workers", "0"]])
def test_transcribe_options_that_are_no_size_are_refused_before_anything_runs(args):
    """--beam-size 0 stored a good recording as failed for good; --workers 0 was a ZeroDivisionError."""
    from typer.testing import CliRunner

    from pixmo.cli import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "Invalid value" in res.output and "Traceback" not in res.output, res.output


@pytest.mark.parametrize("args", [["rewrite", "clean", "--threshold", "5"], ["rewrite", "clean", "--max-tokens", "-1"],
                                  ["demo", "--images", "-3"], ["serve", "--port", "99999"], ["serve", "--workers", "0"],
                                  ["verify", "out", "--workers", "0"]])
def test_options_out_of_their_range_are_refused(args):
    """--threshold 5 replaced every LLM caption with the rule cleaner; --port 99999 listened elsewhere."""
    from typer.testing import CliRunner

    from pixmo.cli import app

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "Invalid value" in res.output, (args, res.output)
