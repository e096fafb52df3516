"""Every dashboard page under Streamlit's AppTest, on a seeded SQLite database: the values on the
page are the database's, review actions write reviews, and nobody but a reviewer gets in."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest
from sqlalchemy import func, select, update
from streamlit.testing.v1 import AppTest

from dashboard.common import plain
from pixmo.commands.dashboard import app_path

APP_PATH = app_path()
from pixmo import curation
from pixmo.auth import create_token
from pixmo.db.models import Assignment, Export, ProjectImage, Recording, Review, User
from pixmo.db.session import Database
from pixmo.storage import LocalStore
from tests.dashboard_helpers import PASSWORD, seed_curation
from tests.s3server import make_s3_store, s3_server  # noqa: F401

TIMEOUT = 60


@pytest.fixture(scope="module")
def seeded_file(tmp_path_factory, sqlite_template):
    """One seeded SQLite file and blob folder per module; tests work on copies of the file."""
    root = tmp_path_factory.mktemp("dash")
    shutil.copy(sqlite_template, root / "seed.db")
    db = Database(f"sqlite:///{root / 'seed.db'}")
    store = LocalStore(root / "blobs", secret="test-secret-for-signing", public_url="http://testserver")
    facts = seed_curation(db, store, root / "export")
    with db.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.dispose()
    return root, facts


@pytest.fixture
def app_db(seeded_file, tmp_path, monkeypatch):
    """A private copy of the seeded database, with the dashboard's settings pointing at it."""
    root, facts = seeded_file
    shutil.copy(root / "seed.db", tmp_path / "dash.db")
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    monkeypatch.setenv("PIXMO_DATABASE_URL", url)
    monkeypatch.setenv("PIXMO_STORAGE_URL", f"file://{root / 'blobs'}")
    db = Database(url)
    yield db, facts
    db.dispose()


def app() -> AppTest:
    return AppTest.from_file(str(APP_PATH), default_timeout=TIMEOUT)


def logged_in(username: str = "demo-reviewer", page: str | None = None) -> AppTest:
    at = app().run()
    at.text_input(key="login_username").input(username)
    at.text_input(key="login_password").input(PASSWORD)
    button(at, "Log in").click()
    at.run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "subheader", "header", "title") for e in at.get(kind))


# ------------------------------------------------------------------ login


def test_login_is_required_and_annotators_are_refused(app_db):
    db, _ = app_db
    at = app().run()
    assert [t.value for t in at.title] == ["PixMo curation dashboard"]
    assert not any(t.value == "Overview" for t in at.title)

    for user, password in [("ann1", PASSWORD), ("demo-reviewer", "not-the-password")]:
        at.text_input(key="login_username").input(user)
        at.text_input(key="login_password").input(password)
        button(at, "Log in").click()
        at.run()
        assert at.error and "Not logged in" in at.error[0].value
        assert [t.value for t in at.title] == ["PixMo curation dashboard"]
    assert "is an annotator" in app_login_error(at, "ann1")

    # a remembered id of an annotator does not open the dashboard either
    with db.session() as s:
        annotator_id = s.scalar(select(User.id).where(User.username == "ann1"))
    forged = app()
    forged.session_state["pixmo_user_id"] = annotator_id
    forged.run()
    assert [t.value for t in forged.title] == ["PixMo curation dashboard"]
    # nor a reviewer's id without a live login (a session a new password or logout ended)
    with db.session() as s:
        reviewer_id = s.scalar(select(User.id).where(User.username == "demo-reviewer"))
    forged = app()
    forged.session_state["pixmo_user_id"] = reviewer_id
    forged.session_state["pixmo_login"] = "session:ended-long-ago"
    forged.run()
    assert [t.value for t in forged.title] == ["PixMo curation dashboard"]
    assert forged.warning and "login has ended" in forged.warning[0].value  # says why


def app_login_error(at: AppTest, user: str) -> str:
    at.text_input(key="login_username").input(user)
    at.text_input(key="login_password").input(PASSWORD)
    button(at, "Log in").click()
    at.run()
    return at.error[0].value


def test_token_login(app_db):
    db, _ = app_db
    with db.session() as s:
        token = create_token(s, s.scalars(select(User).where(User.username == "demo-admin")).one(), "dash")
    at = app().run()
    at.text_input(key="login_token").input(token)
    button(at, "Log in with token").click()
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Overview"]
    assert "demo-admin" in "\n".join(c.value for c in at.sidebar.caption)


# ------------------------------------------------------------------ overview


def test_overview_shows_each_projects_funnel(app_db):
    db, _ = app_db
    at = logged_in()
    assert [t.value for t in at.title] == ["Overview"]
    with db.session() as s:
        funnels = curation.funnel(s)
        images = dict(s.execute(select(ProjectImage.project_id, func.count()).group_by(ProjectImage.project_id)).all())
        recordings = s.scalar(select(func.count()).select_from(Recording))
    assert [h.value for h in at.subheader] == [f"{pf.name} · {pf.kind}" for pf in funnels]
    tables = [df.value for df in at.dataframe]
    for pf, table in zip(funnels, tables):
        assert list(table["stage"]) == [s.name for s in pf.stages]
        assert list(table["images"]) == [s.count for s in pf.stages]
        assert table["images"].iloc[0] == images[pf.project_id]
    assert tables[0].set_index("stage")["images"]["exported"] == 4
    totals = tables[len(funnels)].set_index("series")["count"]
    assert totals["recordings"] == recordings

    # one project only
    at.selectbox(key="overview_project").select(funnels[1].project_id).run()
    assert [h.value for h in at.subheader] == [f"{funnels[1].name} · {funnels[1].kind}"]


# ------------------------------------------------------------------ annotators


def test_annotators_table_matches_database(app_db):
    db, facts = app_db
    with db.session() as s:  # ann2 dawdles: far more active time per item than the others
        ann2 = s.scalar(select(User.id).where(User.username == "ann2"))
        s.execute(update(Assignment).where(Assignment.user_id == ann2).values(active_seconds=5000.0))
    at = logged_in(page="views/annotators.py")
    assert [t.value for t in at.title] == ["Annotators"]
    with db.session() as s:
        expected = {r.username: r.as_row() for r in curation.annotator_stats(s)}
        recordings = Counter(dict(s.execute(
            select(User.username, func.count()).join(Recording, Recording.user_id == User.id).group_by(User.username)).all()))
    table = at.dataframe[0].value
    assert set(table["annotator"]) == set(expected) == {"ann1", "ann2", "ann3"}
    for row in table.to_dict("records"):
        want = expected[row["annotator"]]
        assert row["recordings"] == want["recordings"] == recordings[row["annotator"]]
        assert row["submitted"] == want["submitted"]
        assert row["rejection_rate"] == pytest.approx(want["rejection_rate"])
    gold_row = table[table["gold_scored"] > 0]
    assert gold_row["gold_scored"].sum() == 2 and gold_row["gold_accuracy"].notna().all()

    assert "active_s_per_item" in table.set_index("annotator")["outliers"]["ann2"]
    assert at.warning and "ann2 (" in at.warning[0].value and "active_s_per_item" in at.warning[0].value

    at.selectbox(key="annotators_sort").select("recordings").run()
    assert list(at.dataframe[0].value["recordings"]) == sorted(recordings.values(), reverse=True)


# ------------------------------------------------------------------ browse and review


def test_browse_filters_and_image_detail(app_db):
    db, facts = app_db
    at = logged_in(page="views/browse.py")
    assert [t.value for t in at.title] == ["Browse"]
    page = at.dataframe[0].value
    with db.session() as s:
        assert list(page["image"]) == sorted(s.scalars(select(ProjectImage.image_id).distinct()))

    at.selectbox(key="browse_flag").select("no_speech").run()
    image_id = facts["no_speech_image"]
    assert list(at.dataframe[0].value["image"]) == [image_id]
    assert any(h.value == f"Image #{image_id}" for h in at.header)
    assert len(at.get("image")) == 1  # the picture with its point sets drawn
    with db.session() as s:
        detail = curation.image_detail(s, image_id)
    assert len(at.get("audio")) == len(detail["recordings"])  # one player per recording
    shown = texts(at)
    for caption in detail["captions"]:
        assert plain(caption["text"]) in shown  # shown as text: markdown characters escaped
    assert "no_speech, too_short" in shown
    history = next(df.value for df in at.dataframe if "verdict" in df.value.columns and "reviewer" in df.value.columns)
    assert list(history["review"]) == [r["id"] for r in detail["reviews"]]

    at.selectbox(key="browse_flag").select(None).run()
    at.selectbox(key="browse_status").select("gold").run()
    at.selectbox(key="browse_project").select(facts["points_project"]).run()
    assert sorted(at.dataframe[0].value["image"]) == sorted(facts["gold_images"])

    at.text_input(key="browse_text").input("no such words anywhere").run()
    assert at.info and "No images match" in at.info[0].value


def _review_count(db) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Review))


def test_review_actions_change_the_database(app_db):
    db, facts = app_db
    at = logged_in(page="views/browse.py")
    image_id = at.selectbox(key="browse_pick").value
    with db.session() as s:
        rec_id = s.scalar(select(Recording.id).where(Recording.image_id == image_id).order_by(Recording.id))
        reviewer_id = s.scalar(select(User.id).where(User.username == "demo-reviewer"))
    before = _review_count(db)

    at.selectbox(key=f"review_target_{image_id}").select(("recording", rec_id))
    at.radio(key=f"review_verdict_{image_id}").set_value("rejected")
    button(at, "Save verdict").click()
    at.run()
    assert "a rejection needs a reason" in at.error[0].value
    assert _review_count(db) == before

    at.selectbox(key=f"review_target_{image_id}").select(("recording", rec_id))
    at.radio(key=f"review_verdict_{image_id}").set_value("rejected")
    at.text_input(key=f"review_reason_{image_id}").input("mumbled, hard to follow")
    button(at, "Save verdict").click()
    at.run()
    assert not at.exception and at.success
    with db.session() as s:
        last = s.scalars(select(Review).order_by(Review.id.desc())).first()
    assert _review_count(db) == before + 1
    assert (last.target_type, last.target_id, last.verdict, last.reason, last.reviewer_id, last.image_id) == (
        "recording", rec_id, "rejected", "mumbled, hard to follow", reviewer_id, image_id)
    history = next(df.value for df in at.dataframe if "reviewer" in df.value.columns)
    assert history["review"].iloc[-1] == last.id and history["verdict"].iloc[-1] == "rejected"

    at.selectbox(key=f"review_target_{image_id}").select(("recording", rec_id))
    at.radio(key=f"review_verdict_{image_id}").set_value("flagged")
    button(at, "Save verdict").click()
    at.run()
    assert _review_count(db) == before + 2


def test_review_refused_once_the_reviewer_role_is_gone(app_db):
    db, _ = app_db
    at = logged_in(page="views/browse.py")
    image_id = at.selectbox(key="browse_pick").value
    with db.session() as s:
        s.scalars(select(User).where(User.username == "demo-reviewer")).one().role = "annotator"
    before = _review_count(db)
    at.radio(key=f"review_verdict_{image_id}").set_value("approved")
    button(at, "Save verdict").click()
    at.run()
    assert _review_count(db) == before
    assert [t.value for t in at.title] == ["PixMo curation dashboard"]  # logged out, back at the login page


def test_a_review_form_only_saves_an_item_of_its_own_image(app_db):
    """One widget key for every image let the browser send a choice made on another image with
    this image's form: a verdict was saved on an item the form did not show."""
    db, _ = app_db
    at = logged_in(page="views/browse.py")
    first = at.selectbox(key="browse_pick").value
    chosen = at.selectbox(key=f"review_target_{first}").options[-1]  # picked on the first image, not saved
    at.selectbox(key=f"review_target_{first}").select(at.selectbox(key=f"review_target_{first}").options[-1]).run()
    second = next(int(o.split(" ")[0].lstrip("#")) for o in at.selectbox(key="browse_pick").options
                  if int(o.split(" ")[0].lstrip("#")) != first)
    at.selectbox(key="browse_pick").select(second).run()
    shown = at.selectbox(key=f"review_target_{second}").value  # what this image's form shows
    at.radio(key=f"review_verdict_{second}").set_value("flagged")
    button(at, "Save verdict").click()
    at.run()
    assert not at.exception and at.success, [e.value for e in at.error]
    with db.session() as s:
        last = s.scalars(select(Review).order_by(Review.id.desc())).first()
    assert (last.target_type, last.target_id, last.image_id) == (*shown, second), chosen


def test_the_image_id_box_picks_the_image_and_empties(app_db):
    """A typed id overrode the picker for good (choosing another image or paging still showed it)."""
    db, _ = app_db
    at = logged_in(page="views/browse.py")
    options = at.selectbox(key="browse_pick").options
    target = int(options[-1].split(" ")[0].lstrip("#"))
    at.number_input(key="browse_jump").set_value(target).run()
    assert at.selectbox(key="browse_pick").value == target and at.number_input(key="browse_jump").value == 0
    assert any(h.value == f"Image #{target}" for h in at.header)
    first = int(options[0].split(" ")[0].lstrip("#"))
    at.selectbox(key="browse_pick").select(first).run()
    assert any(h.value == f"Image #{first}" for h in at.header)  # the picker decides again


# ------------------------------------------------------------------ quality


def test_quality_histograms_flags_and_link_into_browse(app_db):
    db, facts = app_db
    at = logged_in(page="views/quality.py")
    assert [t.value for t in at.title] == ["Quality"]
    with db.session() as s:
        wpm = curation.histogram(s, "wpm", bins=20)
        words = curation.histogram(s, "caption_words", bins=20)
        flags = curation.flag_counts(s)
    shown = texts(at)
    assert f"n = {wpm.total} · mean {wpm.mean:.3g} wpm" in shown
    assert f"n = {words.total} · mean {words.mean:.3g} words" in shown
    assert at.dataframe[0].value.to_dict("records") == flags
    assert len(at.get("vega_lite_chart")) == 6

    open_buttons = [b for b in at.button if b.label == "Open in Browse"]
    assert len(open_buttons) == len(facts["flagged_transcripts"])
    open_buttons[-1].click()
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Browse"]
    assert any(h.value == f"Image #{facts['no_speech_image']}" for h in at.header)


# ------------------------------------------------------------------ exports


def test_exports_page_lists_snapshots(app_db):
    db, _ = app_db
    at = logged_in(page="views/exports.py")
    assert [t.value for t in at.title] == ["Exports"]
    with db.session() as s:
        export = s.scalars(select(Export)).one()
    listing = at.dataframe[0].value
    assert list(listing["snapshot"]) == [export.snapshot_id]
    assert listing["shards"].iloc[0] == len(export.shards)
    assert "images 4" in listing["counts"].iloc[0]
    shards = next(df.value for df in at.dataframe if "sha256" in df.value.columns)
    assert list(shards["name"]) == [sh["name"] for sh in export.shards]
    assert any(j.value and "demo-captions" in str(j.value) for j in at.json)
    assert "Manifest file" in texts(at)


def test_exports_page_fetches_an_s3_manifest_on_request(app_db, s3_server, monkeypatch):
    db, _ = app_db
    monkeypatch.setenv("PIXMO_S3_ENDPOINT_URL", s3_server)
    from pixmo.config import get_settings

    get_settings.cache_clear()
    bucket = make_s3_store(s3_server, prefix="exports/remote")
    bucket.put_bytes(b'{"snapshot_id": "remote-snapshot-7", "format": "pixmo-webdataset"}', "manifest.json")
    with db.session() as s:
        s.execute(update(Export).values(output_url=f"s3://{bucket.bucket}/exports/remote"))
    at = logged_in(page="views/exports.py")
    assert "Manifest file" not in texts(at)  # not fetched over the network on every page load
    button(at, "Fetch the manifest file").click()
    at.run()
    assert not at.exception, at.exception
    assert "Manifest file" in texts(at)
    assert any("remote-snapshot-7" in str(j.value) for j in at.json)
    at.run()  # another rerun (any widget) keeps what was fetched
    assert "Manifest file" in texts(at) and not [b for b in at.button if b.label == "Fetch the manifest file"]


def test_exports_page_offers_no_manifest_for_an_hf_snapshot(app_db):
    db, _ = app_db
    with db.session() as s:
        s.add(Export(snapshot_id="hf-snap", format="hf-points", output_url="s3://bucket/hf", filters={},
                     counts={"rows": 7, "images": 4, "files": 1}, versions={"hf_repo": "allenai/pixmo-points"},
                     shards=[{"name": "points/train-00000.parquet", "sha256": "d" * 64, "bytes": 999, "rows": 7}],
                     manifest_sha256=None))
    at = logged_in(page="views/exports.py")
    assert not at.exception, at.exception
    assert list(at.dataframe[0].value["format"]) == ["hf-points", "webdataset"]
    # the webdataset snapshot's local manifest is shown; the HF one has none to fetch
    assert texts(at).count("Manifest file") == 1
    assert not [b for b in at.button if b.label == "Fetch the manifest file"]


def test_people_written_text_is_shown_as_text():
    assert plain("A *bold* [link](x) <b>x</b> :red[y]") == r"A \*bold\* \[link\]\(x\) \<b\>x\</b\> \:red\[y\]"
    assert plain(None) == ""
