"""The data model: migrations match the models, constraints make stages idempotent."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from pixmo.db.migrate import current_revision, head_revision
from pixmo.db.models import Base, Caption, Image, Recording, Transcript
from pixmo.db.queries import insert_ignore


def test_migrations_match_models(db):
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], f"models and migrations disagree; write a migration: {diff}"


def test_database_is_at_head(db):
    assert current_revision(db.url) == head_revision() is not None


def _image(session, sha="a" * 64) -> Image:
    im = Image(sha256=sha, storage_key=f"k/{sha}", width=10, height=10, mime="image/png", bytes=100)
    session.add(im)
    session.flush()
    return im


def test_image_sha_is_unique(db):
    with db.session() as s:
        _image(s)
    with pytest.raises(IntegrityError), db.session() as s:
        _image(s)


def test_insert_ignore_skips_conflicts(db):
    row = dict(sha256="b" * 64, storage_key="k", width=1, height=1, mime="image/png", bytes=1, source="t")
    with db.session() as s:
        assert insert_ignore(s, Image, [row], ["sha256"]) == 1
    with db.session() as s:
        insert_ignore(s, Image, [row, {**row, "sha256": "c" * 64}], ["sha256"])
    with db.session() as s:
        assert sorted(s.scalars(select(Image.sha256))) == ["b" * 64, "c" * 64]


@pytest.mark.parametrize("order", [1, -1])
def test_insert_ignore_takes_rows_that_name_different_columns(db, order):
    """A row with a column the others lack keeps its value, in either order (one executemany took
    its columns from the first row: a later extra value was dropped, a missing one failed it all)."""
    plain = dict(sha256="d" * 64, storage_key="k1", width=1, height=1, mime="image/png", bytes=1)
    extra = dict(sha256="e" * 64, storage_key="k2", width=2, height=2, mime="image/png", bytes=2,
                 source="upload", source_url="http://x/e.png")
    with db.session() as s:
        assert insert_ignore(s, Image, [plain, extra][::order], ["sha256"]) == 2
        assert insert_ignore(s, Image, [plain, extra][::order], ["sha256"]) == 0
    with db.session() as s:
        rows = {im.sha256: im for im in s.scalars(select(Image))}
    assert rows["e" * 64].source_url == "http://x/e.png" and rows["e" * 64].source == "upload"
    assert rows["d" * 64].source_url is None


def test_transcript_unique_per_recording_and_model(db):
    with db.session() as s:
        im = _image(s)
        rec = Recording(image_id=im.id, storage_key="r", sha256="d" * 64, mime="audio/ogg", duration_s=1, bytes=1)
        s.add(rec)
        s.flush()
        s.add(Transcript(recording_id=rec.id, asr_model="tiny.en", text="hi"))
        rec_id = rec.id
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(Transcript(recording_id=rec_id, asr_model="tiny.en", text="again"))
    with db.session() as s:  # another model is a separate row
        s.add(Transcript(recording_id=rec_id, asr_model="base.en", text="hi"))


def test_caption_unique_per_sources_model_prompt(db):
    with db.session() as s:
        im = _image(s)
        kw = dict(image_id=im.id, kind="cleaned", model="m", prompt_version="v1", source_key="1", text="x")
        s.add(Caption(**kw))
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(Caption(**kw))


def test_check_constraints_refuse_bad_enums(db):
    from pixmo.db.models import User

    with pytest.raises(IntegrityError), db.session() as s:
        s.add(User(username="x", role="superuser"))


def test_json_columns_round_trip(db):
    with db.session() as s:
        im = _image(s)
        s.add(Caption(image_id=im.id, kind="merged", model="m", prompt_version="v", source_key="1,2",
                      source_transcript_ids=[1, 2], faithfulness={"supported": 0.5, "added": ["dog"]}))
    with db.session() as s:
        cap = s.scalars(select(Caption)).one()
        assert cap.source_transcript_ids == [1, 2]
        assert cap.faithfulness == {"supported": 0.5, "added": ["dog"]}


def test_wait_for_writers_waits_for_a_write_in_flight_and_gives_up_at_its_timeout(db):
    import threading
    import time

    from pixmo.db.models import User

    flushed, release = threading.Event(), threading.Event()

    def write() -> None:
        with db.session() as s:
            s.add(User(username="in-flight", role="annotator"))
            s.flush()
            flushed.set()
            release.wait(10)

    writer = threading.Thread(target=write)
    writer.start()
    flushed.wait()
    assert db.wait_for_writers(0.2) is False  # still open
    threading.Timer(0.3, release.set).start()
    start = time.monotonic()
    assert db.wait_for_writers(10) is True
    assert time.monotonic() - start >= 0.25
    writer.join()
    assert db.wait_for_writers(1) is True  # nothing in flight: at once


def test_times_are_aware_utc_on_every_backend(db):
    """Every stored time comes back as an aware UTC datetime (SQLite used to give naive ones, which
    the API wrote out without a zone), and a time given in another zone is stored as the same instant."""
    import datetime as dt

    from pixmo.db.models import Job

    plus_two = dt.timezone(dt.timedelta(hours=2))
    with db.session() as s:
        im = _image(s)
        im.created_at = dt.datetime(2026, 1, 1, 12, 0, tzinfo=plus_two)
        job = Job(kind="export", params={})
        s.add(job)
        s.flush()
        image_id, job_id = im.id, job.id
    with db.session() as s:
        created = s.get(Image, image_id).created_at
        started = s.get(Job, job_id).started_at
        # filtering by an instant given in any zone finds it
        found = s.scalar(select(Image.id).where(Image.created_at == dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.timezone.utc)))
    assert created == dt.datetime(2026, 1, 1, 10, 0, tzinfo=dt.timezone.utc) and created.utcoffset() == dt.timedelta(0)
    assert started.tzinfo is not None and started.utcoffset() == dt.timedelta(0)
    assert found == image_id


def test_named_locks_on_postgresql_are_per_schema_and_outlive_a_lost_connection():
    """Database.try_lock on PostgreSQL: deployments in other schemas of one database do not block
    each other, and a lock whose connection is cut (a server restart, an idle-connection killer)
    ends its block without an error (the server freed the lock with the connection)."""
    from sqlalchemy import text

    from tests.conftest import PG_URL, _drop_schema, _postgres_db

    if not PG_URL:
        pytest.skip("PostgreSQL: set PIXMO_TEST_POSTGRES_URL (make test does when it answers)")
    (a, schema_a), (b, schema_b) = _postgres_db(), _postgres_db()
    holder = text(
        "SELECT l.pid FROM pg_locks l, (SELECT hashtextextended(:key, 0) AS k) h WHERE l.locktype = 'advisory' "
        "AND l.granted AND l.objsubid = 1 AND l.classid::bigint = ((h.k >> 32) & 4294967295) "
        "AND l.objid::bigint = (h.k & 4294967295)"
    )
    try:
        with a.try_lock("stage:x") as held:
            assert held and held.still_held()
            with b.try_lock("stage:x") as other_schema, a.try_lock("stage:x") as same_schema:
                assert other_schema and not same_schema
            with a.engine.connect() as conn:
                pid = conn.execute(holder, {"key": f"{schema_a}|pixmo|stage:x"}).scalar_one()
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                conn.commit()
            assert not held.still_held()  # the holder can tell (an export checks before deleting)
        with a.try_lock("stage:x") as held:  # the block above ended cleanly; the lock is free
            assert held
    finally:
        a.dispose()
        b.dispose()
        _drop_schema(schema_a)
        _drop_schema(schema_b)


def test_shared_named_locks_exclude_only_the_exclusive_holder(db):
    """Database.try_lock(shared=True) (how HF subsets hold their export's place side by side) on both
    backends: shared holders do not block each other; an exclusive holder and a shared one do."""
    with db.try_lock("export-x", shared=True) as first, db.try_lock("export-x", shared=True) as second:
        assert first and second
        with db.try_lock("export-x") as exclusive:
            assert not exclusive
    with db.try_lock("export-x") as exclusive:
        assert exclusive
        with db.try_lock("export-x", shared=True) as shared:
            assert not shared
    with db.try_lock("export-x", shared=True) as again:  # all released
        assert again


def test_migration_0007_names_the_writer_of_each_revised_ask_answer(db):
    """A revised ask answer's row named the model and prompt of its first answer; 0007 gives it the
    writer of its current answer (from its last revision entry, in either entry form), with a free
    index where its caption already has a row of that writer."""
    from alembic import command

    from pixmo.db.migrate import alembic_config, upgrade
    from pixmo.db.models import QAPair

    command.downgrade(alembic_config(db.url), "0006")
    with db.session() as s:
        image = Image(sha256="c" * 64, storage_key="k", width=4, height=4, mime="image/png", bytes=1)
        s.add(image)
        s.flush()
        cap = Caption(image_id=image.id, kind="cleaned", text="A cat.", model="m", prompt_version="clean-v1",
                      source_key="x")
        s.add(cap)
        s.flush()

        def qa(**kw):  # noqa: ANN003, ANN202
            row = QAPair(image_id=image.id, question="q?", answer="a.", status="accepted", **kw)
            s.add(row)
            s.flush()
            return row.id

        entry = {"answer": "a0", "feedback": "f", "at": "2026-01-01T00:00:00"}
        ids = {
            "revised": qa(source="ask", caption_id=cap.id, model="m", prompt_version="ask-v1", idx=1, revisions=[
                {**entry, "model": "m", "prompt_version": "ask-v1", "revised_by_model": "m", "revised_by_prompt": "revise-v1"}]),
            "taken": qa(source="ask", caption_id=cap.id, model="m", prompt_version="revise-v1", idx=1, revisions=[]),
            "older": qa(source="ask", model="m", prompt_version="ask-v1", revisions=[  # before revised_by_* existed
                {**entry, "model": "m2", "prompt_version": "revise-v1"}]),
            "older2": qa(source="ask", model="m", prompt_version="ask-v1", revisions=[
                {**entry, "model": "m2", "prompt_version": "revise-v1"}, {**entry, "model": "m3", "prompt_version": "revise-v1"}]),
            "unrevised": qa(source="ask", model="m", prompt_version="ask-v1", revisions=[]),
            "capqa": qa(source="capqa", model="m", prompt_version="capqa-v1", revisions=[{"attempts": 3}]),
        }
    upgrade(db.url)
    with db.session() as s:
        got = {k: (r.model, r.prompt_version, r.idx) for k, i in ids.items() for r in [s.get(QAPair, i)]}
        entries = {k: s.get(QAPair, i).revisions for k, i in ids.items()}
    assert got == {"revised": ("m", "revise-v1", 2), "taken": ("m", "revise-v1", 1), "older": ("m2", "revise-v1", 0),
                   "older2": ("m3", "revise-v1", 0), "unrevised": ("m", "ask-v1", 0), "capqa": ("m", "capqa-v1", 0)}
    # every entry names the writer of the answer it replaced: the first answer's was the row's
    assert entries["revised"] == [{**entry, "model": "m", "prompt_version": "ask-v1"}]
    assert entries["older"] == [{**entry, "model": "m", "prompt_version": "ask-v1"}]
    assert entries["older2"] == [{**entry, "model": "m", "prompt_version": "ask-v1"},
                                 {**entry, "model": "m2", "prompt_version": "revise-v1"}]
    assert entries["capqa"] == [{"attempts": 3}]


def test_migration_0008_accepts_the_capqa_pairs_stored_pending(db):
    """CapQA pairs were stored pending, which no exporter takes: 0008 accepts them, and leaves an
    unfinished ask exchange (also pending) and failed pairs as they are."""
    from alembic import command

    from pixmo.db.migrate import alembic_config, upgrade
    from pixmo.db.models import QAPair

    command.downgrade(alembic_config(db.url), "0007")
    with db.session() as s:
        image = Image(sha256="d" * 64, storage_key="k", width=4, height=4, mime="image/png", bytes=1)
        s.add(image)
        s.flush()
        rows = {name: QAPair(image_id=image.id, source=source, status=status, question="q?", answer="a.")
                for name, source, status in [("capqa", "capqa", "pending"), ("failed", "capqa", "failed"),
                                             ("ask", "ask", "pending"), ("done", "capqa", "accepted")]}
        s.add_all(rows.values())
        s.flush()
        ids = {name: row.id for name, row in rows.items()}
    upgrade(db.url)
    with db.session() as s:
        got = {name: s.get(QAPair, i).status for name, i in ids.items()}
    assert got == {"capqa": "accepted", "failed": "failed", "ask": "pending", "done": "accepted"}
