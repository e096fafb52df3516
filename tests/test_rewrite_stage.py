"""The rewrite stages on a real database: lineage, idempotent reruns, caching, failures stored
with their reason, a SIGKILLed run that resumes without duplicates, the Ray executor, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from pipelines.rewrite import rewrite
from pixmo.cli import app
from pixmo.db.models import Caption, Image, Job, LLMCacheEntry, Project, QAPair, Recording, Review, Transcript
from tests.llm_helpers import REPO, Reply, add_transcripts, llm_server, local_backend, scripted  # noqa: F401

LOCAL_MODEL = "SmolLM2-135M-Instruct.Q4_1"
runner = CliRunner()


def captions(db, kind="cleaned"):
    with db.session() as s:
        return list(s.scalars(select(Caption).where(Caption.kind == kind).order_by(Caption.id)))


def openai_opts(server) -> dict:
    return {"backend": "openai", "base_url": server if isinstance(server, str) else server.base_url}


# -- with the real local model, on SQLite and PostgreSQL ---------------------------------------


@pytest.mark.slow
def test_clean_and_merge_write_lineage_and_a_rerun_adds_nothing(db, local_backend):
    ids = add_transcripts(db, [["um so a a red car next to uh a tree"], ["uh two dogs on the grass", "two brown dogs"]])
    stats = rewrite(db, "clean", llm=local_backend, max_tokens=20, batch_size=4)
    assert stats["total"] == 3 and stats["statuses"].get("failed", 0) == 0
    rows = captions(db)
    assert sorted(r.source_transcript_ids[0] for r in rows) == sorted(sum(ids, []))
    for r in rows:
        assert r.model == LOCAL_MODEL and r.prompt_version == "clean-v1" and r.status == "ok" and r.text
        assert r.source_key == str(r.source_transcript_ids[0]) and r.job_id == stats["job_id"]
        assert r.produced_by in ("llm", "rule") and r.faithfulness["faithful"]
    with db.session() as s:
        job = s.get(Job, stats["job_id"])
        assert job.kind == "rewrite.clean" and job.status == "succeeded" and job.params["max_tokens"] == 20
        assert job.stats["llm"]["model"] == LOCAL_MODEL and job.stats["llm"]["requests"] >= 3
        assert s.scalar(select(func.count()).select_from(LLMCacheEntry)) >= 3

    merged = rewrite(db, "merge", llm=local_backend, max_tokens=20)
    assert merged["total"] == 1  # only the image with two transcripts
    (m,) = captions(db, "merged")
    assert m.source_transcript_ids == ids[1] and m.source_key == ",".join(map(str, ids[1]))
    assert m.produced_by == "llm" and "score" in m.faithfulness and m.prompt_version == "merge-v1"

    again = rewrite(db, "clean", llm=local_backend, max_tokens=20)
    assert again["total"] == 0 and len(captions(db)) == 3
    assert rewrite(db, "merge", llm=local_backend, max_tokens=20)["total"] == 0


@pytest.mark.slow
def test_capqa_writes_pairs_per_caption(db, local_backend):
    add_transcripts(db, [["a red car next to a tree"]])
    with db.session() as s:
        image_id = s.scalar(select(Image.id))
        cap = Caption(image_id=image_id, kind="cleaned", text="A red car is parked next to a green tree.",
                      model="human", prompt_version="-", produced_by="human", source_key="x")
        s.add(cap)
        s.flush()
        cap_id = cap.id
    stats = rewrite(db, "capqa", llm=local_backend, pairs=1, max_tokens=40)
    assert stats["total"] == 1
    with db.session() as s:
        pairs = list(s.scalars(select(QAPair)))
    assert pairs and all(p.caption_id == cap_id and p.source == "capqa" and p.prompt_version == "capqa-v1"
                         and p.model == LOCAL_MODEL and p.image_id == image_id for p in pairs)
    if pairs[0].status == "failed":  # a 135M model may miss the JSON format: stored with the reason
        assert len(pairs) == 1 and pairs[0].error
    else:
        assert all(p.status == "accepted" and p.question and p.answer and p.messages == [p.question, p.answer]
                   for p in pairs)
    assert rewrite(db, "capqa", llm=local_backend, pairs=1, max_tokens=40)["total"] == 0


# -- failures, caching (a scripted server) -----------------------------------------------------


def test_invalid_capqa_output_is_stored_failed_with_its_reason(sqlite_db, scripted):
    add_transcripts(sqlite_db, [["a red car"]])
    scripted.set("A red car.")  # clean
    rewrite(sqlite_db, "clean", **openai_opts(scripted))
    scripted.set('{"pairs": [{"question": "What is red?"}]}')
    stats = rewrite(sqlite_db, "capqa", **openai_opts(scripted))
    assert stats["statuses"] == {"failed": 1} and stats["reasons"] == {"schema": 1}
    assert len(scripted.requests) == 3  # first try + 2 retries with the error
    with sqlite_db.session() as s:
        (qa,) = s.scalars(select(QAPair))
    assert qa.status == "failed" and "pairs.0.answer: Field required" in qa.error and qa.model == "scripted-model"
    assert qa.revisions[0]["attempts"] == 3
    assert rewrite(sqlite_db, "capqa", **openai_opts(scripted))["total"] == 0  # a failure is an output too


def test_a_batch_with_good_and_failed_capqa_stores_both(sqlite_db, scripted):
    """Pairs and a failed row in one insert: the failed row's error and revisions used to break
    the insert (or, the other way round, be dropped)."""
    add_transcripts(sqlite_db, [["a red car"], ["a blue bus"]])
    scripted.set(Reply(echo=True))
    rewrite(sqlite_db, "clean", **openai_opts(scripted))
    good = '{"pairs": [{"question": "What is red?", "answer": "A car."}]}'
    bad = '{"pairs": [{"question": "What is blue?"}]}'
    scripted.set(good, bad)  # one caption gets pairs, the other only bad replies (the order: test_db.py)
    stats = rewrite(sqlite_db, "capqa", **openai_opts(scripted), pairs=1)
    assert stats["statuses"] == {"failed": 1, "llm": 1}
    with sqlite_db.session() as s:
        rows = {qa.status: qa for qa in s.scalars(select(QAPair))}
    assert set(rows) == {"accepted", "failed"}
    assert rows["accepted"].answer == "A car." and rows["accepted"].error is None and rows["accepted"].revisions == []
    assert "pairs.0.answer: Field required" in rows["failed"].error and rows["failed"].revisions[0]["attempts"] == 3


def test_capqa_skips_captions_the_export_would_not_use(sqlite_db, scripted):
    """CapQA was written from every ok caption: a rejected one, or one written from a rejected
    recording, gave pairs the export then had to leave out (clean and merge already skip such input)."""
    ids = add_transcripts(sqlite_db, [["a red car"], ["a blue bus"], ["a green tree"]])
    scripted.set(Reply(echo=True))
    rewrite(sqlite_db, "clean", **openai_opts(scripted))
    by_source = {c.source_transcript_ids[0]: c for c in captions(sqlite_db)}
    with sqlite_db.session() as s:
        rejected_caption = by_source[ids[0][0]]
        s.add(Review(target_type="caption", target_id=rejected_caption.id, image_id=rejected_caption.image_id,
                     verdict="rejected", reason="made up"))
        rec = s.get(Transcript, ids[1][0]).recording_id
        s.add(Review(target_type="recording", target_id=rec, image_id=by_source[ids[1][0]].image_id,
                     verdict="flagged", reason="someone else's voice"))
    scripted.set('{"pairs": [{"question": "What is green?", "answer": "A tree."}]}')
    stats = rewrite(sqlite_db, "capqa", **openai_opts(scripted), pairs=1)
    assert stats["total"] == 1
    with sqlite_db.session() as s:
        assert [qa.caption_id for qa in s.scalars(select(QAPair))] == [by_source[ids[2][0]].id]


def test_capqa_pairs_reach_the_capqa_export_unless_a_reviewer_rejects_them(sqlite_db, scripted, tmp_path):
    """The stage's pairs used to be stored pending, which no exporter takes and nothing ever
    accepted: `pixmo export hf --subset capqa` stayed empty for all but the demo's rows."""
    pq = pytest.importorskip("pyarrow.parquet")
    from pixmo.export import export_hf
    from pixmo.storage import LocalStore

    add_transcripts(sqlite_db, [["a red car"], ["a blue bus"]])
    with sqlite_db.session() as s:  # the helper's placeholders are no sha256 the export would take
        for rec in s.scalars(select(Recording)):
            rec.sha256 = hashlib.sha256(rec.storage_key.encode()).hexdigest()
    scripted.set(Reply(echo=True))
    rewrite(sqlite_db, "clean", **openai_opts(scripted))
    scripted.set('{"pairs": [{"question": "What is red?", "answer": "A car."}]}',
                 '{"pairs": [{"question": "What is blue?", "answer": "A bus."}]}')
    assert rewrite(sqlite_db, "capqa", **openai_opts(scripted), pairs=1)["statuses"] == {"llm": 2}
    with sqlite_db.session() as s:
        bus = s.scalars(select(QAPair).where(QAPair.answer == "A bus.")).one()
        s.add(Review(target_type="qa_pair", target_id=bus.id, image_id=bus.image_id, verdict="rejected", reason="vague"))
    store = LocalStore(tmp_path / "blobs", "secret", "http://127.0.0.1")
    result = export_hf(sqlite_db, store, str(tmp_path / "hf"), "capqa")
    rows = [r for f in sorted((tmp_path / "hf" / "capqa").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert result.rows == 1 and [(r["question"], r["answer"], r["messages"]) for r in rows] == [
        ("What is red?", "A car.", ["What is red?", "A car."])]
    # a pair written from a caption that a reviewer rejects goes with it
    with sqlite_db.session() as s:
        car = s.scalars(select(QAPair).where(QAPair.answer == "A car.")).one()
        s.add(Review(target_type="caption", target_id=car.caption_id, image_id=car.image_id, verdict="rejected",
                     reason="not what the speaker said"))
    assert export_hf(sqlite_db, store, str(tmp_path / "hf"), "capqa").rows == 0


def test_a_run_whose_stage_lock_is_cut_stops_before_it_writes_again(db, scripted, monkeypatch):
    """On PostgreSQL the stage lock lives on one connection; when the server cut it (a restart, an
    idle-session timeout) the run went on unaware while a second worker could take the lock and
    redo the same items alongside it."""
    from sqlalchemy import text

    from pipelines.base import StageLockLost
    from pipelines.rewrite import CleanStage

    if db.is_sqlite:
        pytest.skip("a SQLite stage lock is a flock on a file this process holds: it cannot be cut")
    add_transcripts(db, [["a red car"], ["a blue bus"], ["a green tree"]])
    scripted.set(Reply(echo=True))
    real_write = CleanStage.write

    def write_then_cut(self, session, results):  # noqa: ANN001, ANN202
        real_write(self, session, results)
        with db.engine.connect() as conn:  # the server ends the connection holding the lock
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                              "AND granted AND pid <> pg_backend_pid()"))
            conn.commit()

    monkeypatch.setattr(CleanStage, "write", write_then_cut)
    with pytest.raises(StageLockLost, match="lock was lost"):
        rewrite(db, "clean", batch_size=1, **openai_opts(scripted))
    assert len(captions(db)) == 1  # the first batch, written while the lock was held; no more
    monkeypatch.undo()
    assert rewrite(db, "clean", **openai_opts(scripted))["total"] == 2  # the next run goes on


def test_a_request_the_server_refuses_fails_alone_and_the_run_goes_on(sqlite_db, scripted):
    """A prompt beyond the model's context gets HTTP 400: that item fails on its own (clean falls back
    to the rule cleaner, merge and capqa store a failed row) instead of failing the run, on every rerun."""
    too_long = " ".join(f"a car with {i} doors" for i in range(1500))  # nothing the rule cleaner drops
    ids = add_transcripts(sqlite_db, [["a blue bus"], [too_long], ["a green tree"], [too_long, "a red car"]])
    long_prompt = lambda body: len(json.dumps(body["messages"])) > 20_000  # noqa: E731
    scripted.set("A caption.")
    scripted.refuse_if = long_prompt
    stats = rewrite(sqlite_db, "clean", batch_size=8, **openai_opts(scripted))
    assert stats["total"] == 5 and "failed" not in stats["statuses"]
    by_source = {c.source_transcript_ids[0]: c for c in captions(sqlite_db)}
    assert len(by_source) == 5
    for tid in (ids[1][0], ids[3][0]):
        c = by_source[tid]
        assert c.produced_by == "rule" and c.faithfulness["fallback_reason"] == "request_refused"
        assert "maximum context length" in c.faithfulness["llm_error"]
    assert by_source[ids[0][0]].faithfulness.get("fallback_reason") != "request_refused"
    # 3 short prompts and the long one (asked once for both): the answered ones were not sent again
    assert len(scripted.requests) == 4
    assert rewrite(sqlite_db, "clean", **openai_opts(scripted))["total"] == 0

    merged = rewrite(sqlite_db, "merge", **openai_opts(scripted))
    assert merged["statuses"] == {"failed": 1} and merged["reasons"] == {"request_refused": 1}
    (m,) = captions(sqlite_db, "merged")
    assert m.status == "failed" and "HTTP 400" in m.error and m.source_transcript_ids == ids[3]

    scripted.set('{"pairs": [{"question": "What is there?", "answer": "A caption."}]}')
    qa = rewrite(sqlite_db, "capqa", pairs=1, batch_size=8, **openai_opts(scripted))
    assert qa["statuses"] == {"llm": 3, "failed": 2} and qa["reasons"]["request_refused"] == 2
    # a refused prompt is tried with the schema and once more asking for JSON in the prompt; the
    # refusal does not make the backend give up structured outputs for the others
    assert sum(map(long_prompt, scripted.requests)) == 2  # the two long captions are the same request
    short = [r for r in scripted.requests if not long_prompt(r)]
    assert len(short) == 3 and all("response_format" in r for r in short)


def test_a_server_that_refuses_a_whole_first_batch_stops_the_run_and_writes_nothing(sqlite_db, scripted):
    from pixmo.llm import LLMError

    add_transcripts(sqlite_db, [["a blue bus"], ["a green tree"]])
    scripted.set("A caption.")
    scripted.refuse_if = lambda body: True  # e.g. --json-mode schema on a server without structured outputs
    with pytest.raises(LLMError, match="refused every request, even a tiny one"):
        rewrite(sqlite_db, "clean", batch_size=4, **openai_opts(scripted))
    assert captions(sqlite_db) == []


def test_a_first_batch_of_only_too_long_prompts_fails_item_by_item(sqlite_db, scripted):
    """Every prompt of the first batch too long: a tiny probe request is answered, so the server is
    fine and the items fail one by one (they used to stop the run, on every rerun)."""
    too_long = " ".join(f"a car with {i} doors" for i in range(1500))
    add_transcripts(sqlite_db, [[too_long, too_long + " and a tree"]] * 3)
    scripted.set("A caption.")
    scripted.refuse_if = lambda body: len(json.dumps(body["messages"])) > 20_000
    stats = rewrite(sqlite_db, "merge", **openai_opts(scripted))
    assert stats["statuses"] == {"failed": 3} and stats["reasons"] == {"request_refused": 3}
    assert rewrite(sqlite_db, "merge", **openai_opts(scripted))["total"] == 0


def test_identical_requests_are_answered_once(sqlite_db, scripted):
    add_transcripts(sqlite_db, [["a red car"], ["a red car"], ["a blue bus"]])
    scripted.set(Reply(echo=True))
    stats = rewrite(sqlite_db, "clean", **openai_opts(scripted))
    assert len(scripted.requests) == 2 and stats["llm"]["cache_hits"] == 1 and stats["llm"]["requests"] == 2
    assert len(captions(sqlite_db)) == 3
    with sqlite_db.session() as s:
        for c in s.scalars(select(Caption)):
            s.delete(c)
    again = rewrite(sqlite_db, "clean", **openai_opts(scripted))
    assert len(scripted.requests) == 2 and again["llm"]["cache_hits"] == 3 and len(captions(sqlite_db)) == 3
    assert rewrite(sqlite_db, "clean", **openai_opts(scripted), cache=False)["total"] == 0  # all done


def test_project_and_limit_select_the_work(sqlite_db, scripted):
    add_transcripts(sqlite_db, [["a cat"], ["a dog"]], project="one")
    add_transcripts(sqlite_db, [["a bird"]], project="two")
    scripted.set(Reply(echo=True))
    assert rewrite(sqlite_db, "clean", project="two", **openai_opts(scripted))["total"] == 1
    assert rewrite(sqlite_db, "clean", project="one", limit=1, **openai_opts(scripted))["total"] == 1
    assert rewrite(sqlite_db, "clean", **openai_opts(scripted))["total"] == 1
    from pixmo.errors import ValidationError

    with pytest.raises(ValidationError, match="no project"):
        rewrite(sqlite_db, "clean", project="nope", **openai_opts(scripted))
    with pytest.raises(ValidationError, match="limit must be 0 or more"):  # a negative slice kept all but the last
        rewrite(sqlite_db, "clean", limit=-1, **openai_opts(scripted))


# -- through `pixmo llm serve`: kill and resume, Ray ---------------------------------------------


@pytest.mark.slow
def test_a_killed_run_resumes_without_duplicates(sqlite_db, llm_server):
    add_transcripts(sqlite_db, [[f"uh a red car and {n} dogs next to a tree"] for n in ("two", "three", "four", "five")])
    env = {**os.environ, "PIXMO_DATABASE_URL": sqlite_db.url, "PIXMO_ENV": "test"}
    cmd = [sys.executable, "-m", "pixmo.cli", "rewrite", "clean", "--backend", "openai", "--base-url", llm_server,
           "--batch-size", "1", "--max-tokens", "12", "--json"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(captions(sqlite_db)) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(captions(sqlite_db))
    assert 1 <= done_before < 4, proc.stderr.read().decode()[-2000:]

    stats = rewrite(sqlite_db, "clean", **openai_opts(llm_server), max_tokens=12, batch_size=1)
    assert stats["total"] == 4 - done_before
    rows = captions(sqlite_db)
    assert len(rows) == 4 and len({r.source_key for r in rows}) == 4
    with sqlite_db.session() as s:
        jobs = [(j.status, j.error or "") for j in s.scalars(select(Job).order_by(Job.id))]
    # the killed run never finished: the next run found its process gone and marked it
    assert [status for status, _ in jobs] == ["failed", "succeeded"] and jobs[0][1].startswith("interrupted")


@pytest.mark.slow
def test_ray_executor_runs_the_same_stage(sqlite_db, llm_server, ray_local):
    add_transcripts(sqlite_db, [["a green bus"], ["um a yellow kite"]])
    stats = rewrite(sqlite_db, "clean", executor="ray", actors=2, batch_size=2, max_tokens=12,
                    **openai_opts(llm_server))
    assert stats["total"] == 2 and stats["llm"]["executor"] == "ray" and stats["llm"]["requests"] == 2
    rows = captions(sqlite_db)
    assert len(rows) == 2 and all(r.model == LOCAL_MODEL and r.text for r in rows)
    with sqlite_db.session() as s:
        assert s.get(Job, stats["job_id"]).params["executor"] == "ray"


@pytest.mark.slow
def test_a_refused_request_on_ray_fails_alone_and_the_others_keep_their_replies(sqlite_db, scripted, ray_local):
    """On Ray a refusal was raised out of its actor with only its chunk's replies: the run paired
    the whole batch with that short list (items got other items' replies, or none) and the cache
    stored replies under other requests' keys, then failed the stage."""
    too_long = " ".join(f"a car with {i} doors" for i in range(1500))
    ids = add_transcripts(sqlite_db, [["a blue bus"], ["a green tree"], [too_long], ["a red kite"]])
    scripted.set("A caption.")
    scripted.refuse_if = lambda body: len(json.dumps(body["messages"])) > 20_000
    stats = rewrite(sqlite_db, "clean", executor="ray", actors=2, batch_size=4, **openai_opts(scripted))
    assert stats["total"] == 4 and "failed" not in stats["statuses"]
    by_source = {c.source_transcript_ids[0]: c for c in captions(sqlite_db)}
    assert sorted(by_source) == sorted(i for (i,) in ids)
    refused = {tid for tid, c in by_source.items() if c.faithfulness.get("fallback_reason") == "request_refused"}
    assert refused == {ids[2][0]} and by_source[ids[2][0]].produced_by == "rule"
    assert len(scripted.requests) == 4  # each asked once: no reply was taken for another's


# -- the CLI ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", [["rewrite"], ["rewrite", "clean"], ["rewrite", "merge"], ["rewrite", "capqa"],
                                 ["rewrite", "text"], ["llm"], ["llm", "serve"], ["llm", "prompts"]])
def test_every_command_has_help(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_cli_rewrites_text_and_runs_the_stage(tmp_path, monkeypatch, scripted):
    from pixmo.db.session import _databases, get_database

    monkeypatch.chdir(tmp_path)
    _databases.clear()
    assert runner.invoke(app, ["init"]).exit_code == 0
    scripted.set("A red car next to a tree.")
    out = runner.invoke(app, ["rewrite", "text", "--task", "clean", "um a a red car next to uh a tree",
                              "--backend", "openai", "--base-url", scripted.base_url, "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["text"] == "A red car next to a tree." and result["produced_by"] == "llm"
    assert result["prompt_version"] == "clean-v1" and result["faithfulness"]["score"] == 1.0
    scripted.set('{"pairs": [{"question": "What is red?"}]}')  # never a valid CapQA reply
    for extra in ([], ["--json"]):  # a failure exits 1 with and without --json
        out = runner.invoke(app, ["rewrite", "text", "--task", "capqa", "A red car.", "--backend", "openai",
                                  "--base-url", scripted.base_url, *extra])
        assert out.exit_code == 1, out.output
    assert json.loads(out.stdout)["status"] == "failed"
    scripted.set("A red car next to a tree.")

    db = get_database()
    add_transcripts(db, [["a red car next to a tree"]])
    out = runner.invoke(app, ["rewrite", "clean", "--backend", "openai", "--base-url", scripted.base_url, "--json"])
    assert out.exit_code == 0, out.output
    stats = json.loads(out.stdout)
    assert stats["statuses"] == {"llm": 1} and stats["llm"]["model"] == "scripted-model"
    table = runner.invoke(app, ["rewrite", "merge", "--backend", "openai", "--base-url", scripted.base_url])
    assert table.exit_code == 0 and "rewrite merge" in table.output
    bad = runner.invoke(app, ["rewrite", "clean", "--backend", "nope"])
    assert bad.exit_code == 2 and "unknown LLM backend" in bad.output
    for database in _databases.values():
        database.dispose()
    _databases.clear()


def test_with_batches_of_one_a_refused_first_item_does_not_block_the_rest(sqlite_db, scripted):
    ids = add_transcripts(sqlite_db, [["a red car " * 3000], ["a blue bus"]])
    scripted.set("A caption.")
    scripted.refuse_if = lambda body: len(json.dumps(body["messages"])) > 20_000
    stats = rewrite(sqlite_db, "clean", batch_size=1, **openai_opts(scripted))
    # the refused one, a tiny probe (is the server fine?), the second one
    assert stats["total"] == 2 and len(captions(sqlite_db)) == 2 and len(scripted.requests) == 3
    assert {c.source_transcript_ids[0] for c in captions(sqlite_db)} == {ids[0][0], ids[1][0]}


def test_rejected_or_flagged_transcripts_are_not_rewritten(sqlite_db, scripted):
    """A merge that took in a transcript of a rejected recording would be dropped by the export, and
    its key would block the merge of the good ones for ever; clean leaves such transcripts out too."""
    from pixmo.db.models import Review, Transcript, User

    ids = add_transcripts(sqlite_db, [["a red car", "a red car by a tree", "a cat on a sofa", "a red car again"]])[0]
    with sqlite_db.session() as s:
        rev = User(username="rev", role="reviewer")
        s.add(rev)
        s.flush()
        bad_rec = s.get(Transcript, ids[2]).recording_id
        s.add_all([
            Review(target_type="recording", target_id=bad_rec, image_id=1, reviewer_id=rev.id, verdict="rejected",
                   reason="describes another image"),
            Review(target_type="transcript", target_id=ids[3], image_id=1, reviewer_id=rev.id, verdict="flagged"),
        ])
    scripted.set("A caption.")
    assert rewrite(sqlite_db, "clean", **openai_opts(scripted))["total"] == 2
    assert sorted(c.source_transcript_ids[0] for c in captions(sqlite_db)) == ids[:2]
    assert rewrite(sqlite_db, "merge", **openai_opts(scripted))["total"] == 1
    (m,) = captions(sqlite_db, "merged")
    assert m.source_transcript_ids == ids[:2]


def test_rows_another_run_wrote_meanwhile_count_as_exists(sqlite_db, scripted):
    from pipelines.rewrite import CleanStage, RewriteParams

    add_transcripts(sqlite_db, [["a red car"], ["a blue bus"]])
    scripted.set("A caption.")
    late = CleanStage(sqlite_db, RewriteParams(task="clean", **openai_opts(scripted)))
    assert len(late.items()) == 2  # planned before the other run wrote anything
    assert rewrite(sqlite_db, "clean", **openai_opts(scripted))["total"] == 2
    stats = late.run(progress=False)
    assert stats["statuses"] == {"exists": 2}  # was counted as written (llm/rule) though nothing was
    assert len(captions(sqlite_db)) == 2


def test_zero_pairs_is_refused(sqlite_db, scripted):
    from pixmo.errors import ValidationError

    with pytest.raises(ValidationError, match="pairs must be at least 1"):
        rewrite(sqlite_db, "capqa", pairs=0, **openai_opts(scripted))


def test_a_reply_with_a_nul_is_stored_without_it(db, scripted):
    """PostgreSQL's text cannot hold a NUL: a reply with one failed the whole batch's insert there."""
    add_transcripts(db, [["a red car"], ["a blue bus"]])
    scripted.set("A red\u0000 car.")
    stats = rewrite(db, "clean", **openai_opts(scripted))
    assert stats["total"] == 2
    assert all("\x00" not in c.text for c in captions(db))


def test_retry_failed_tries_this_models_failed_rows_again(sqlite_db, scripted):
    add_transcripts(sqlite_db, [["a red car"]], project="one")
    add_transcripts(sqlite_db, [["a blue bus"]], project="two")
    scripted.set(Reply(echo=True))
    rewrite(sqlite_db, "clean", **openai_opts(scripted))
    with sqlite_db.session() as s:
        projects = dict(s.execute(select(Project.name, Project.id)).all())
        caption = s.scalars(select(Caption).where(Caption.project_id == projects["two"])).one()
        caption.status, caption.text, caption.error = "failed", "", "timeout"  # as a run during an outage leaves it
        s.add(Review(target_type="caption", target_id=caption.id, image_id=caption.image_id, verdict="rejected",
                     reason="garbage from the outage"))  # a reviewer saw the failed row
    assert rewrite(sqlite_db, "clean", **openai_opts(scripted))["total"] == 0  # failures are final...
    from pipelines.base import StageBusy

    with sqlite_db.try_lock("stage:rewrite.clean"):  # a worker runs the stage: nothing of its is touched
        with pytest.raises(StageBusy):
            rewrite(sqlite_db, "clean", **openai_opts(scripted), retry_failed=True)
    assert [c.status for c in captions(sqlite_db)].count("failed") == 1  # (the failed row used to go)
    stats = rewrite(sqlite_db, "clean", **openai_opts(scripted), retry_failed=True)
    assert stats["retried_failed"] == 1 and stats["total"] == 1 and "failed" not in stats["statuses"]  # ...until asked
    assert [(c.status, bool(c.text)) for c in captions(sqlite_db)] == [("ok", True), ("ok", True)]
    with sqlite_db.session() as s:  # the verdict went with the row it was on, not onto the new one
        assert s.scalar(select(func.count()).select_from(Review)) == 0

    scripted.set('{"pairs": [{"question": "What is it?"}]}')  # no answer: both captions' QA fail
    assert rewrite(sqlite_db, "capqa", **openai_opts(scripted), pairs=1)["statuses"] == {"failed": 2}
    scripted.set('{"pairs": [{"question": "What is it?", "answer": "A vehicle."}]}')  # the server is fixed
    assert rewrite(sqlite_db, "capqa", **openai_opts(scripted), pairs=1)["total"] == 0
    stats = rewrite(sqlite_db, "capqa", **openai_opts(scripted), pairs=1, project="one", retry_failed=True,
                    cache=False)
    assert stats["retried_failed"] == 1 and stats["statuses"] == {"llm": 1}  # only project one's
    with sqlite_db.session() as s:
        rows = sorted((qa.project_id, qa.status, qa.answer) for qa in s.scalars(select(QAPair)))
    assert rows == sorted([(projects["one"], "accepted", "A vehicle."), (projects["two"], "failed", "")])
