"""The curation library behind the dashboard, on a seeded database (SQLite and PostgreSQL):
every aggregate is checked against the same number computed naively from the rows."""

from __future__ import annotations

import datetime as dt
import io
import statistics
from collections import Counter

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from pixmo import curation
from pixmo.auth import create_token, create_user, hash_password
from pixmo.projects import create_project
from pixmo.curation.annotators import AnnotatorStats, mark_outliers
from pixmo.curation.overview import exported_count
from pixmo.curation.serve import dashboard_env, serve_dashboard, streamlit_command
from pixmo.db.models import (
    Assignment, Caption, Export, Image, LoginAttempt, PointSet, ProjectImage, QAPair, Recording, Review, Transcript, User,
)
from pixmo.logins import MAX_FAILURES_PER_USER_IP
from pixmo.errors import ConfigError, NotFoundError, ValidationError
from tests.dashboard_helpers import seeded  # noqa: F401 - fixture

# ------------------------------------------------------------------ naive reference computations


def _rows(db, model):
    with db.session() as s:
        return list(s.scalars(select(model).order_by(model.id)))


def _target_owner(db) -> dict[tuple[str, int], tuple[int | None, int, int | None]]:
    """(target_type, id) -> (project_id, image_id, annotator id) for every reviewable row."""
    recs = {r.id: r for r in _rows(db, Recording)}
    out = {("recording", r.id): (r.project_id, r.image_id, r.user_id) for r in recs.values()}
    out |= {("transcript", t.id): (recs[t.recording_id].project_id, recs[t.recording_id].image_id,
                                   recs[t.recording_id].user_id) for t in _rows(db, Transcript)}
    out |= {("caption", c.id): (c.project_id, c.image_id, None) for c in _rows(db, Caption)}
    out |= {("point_set", p.id): (p.project_id, p.image_id, p.user_id) for p in _rows(db, PointSet)}
    out |= {("qa_pair", q.id): (q.project_id, q.image_id, q.user_id) for q in _rows(db, QAPair)}
    out |= {("assignment", a.id): (a.project_id, a.image_id, a.user_id) for a in _rows(db, Assignment)}
    return out


def _current_verdicts(db) -> dict[tuple[str, int], str]:
    current = {}
    for r in _rows(db, Review):  # ordered by id: the last one wins
        current[(r.target_type, r.target_id)] = r.verdict
    return current


# ------------------------------------------------------------------ overview


def test_funnel_matches_rows(seeded):
    db, facts = seeded.db, seeded.facts
    recs = _rows(db, Recording)
    ok_recordings = {t.recording_id for t in _rows(db, Transcript) if t.status == "ok"}
    owners = _target_owner(db)
    expected: dict[int, dict[str, set]] = {}

    def add(pid, stage, image_id):
        expected.setdefault(pid, {}).setdefault(stage, set()).add(image_id)

    for pi in _rows(db, ProjectImage):
        add(pi.project_id, "images", pi.image_id)
    for a in _rows(db, Assignment):
        add(a.project_id, "assigned", a.image_id)
    for r in recs:
        add(r.project_id, "recorded", r.image_id)
        if r.id in ok_recordings:
            add(r.project_id, "transcribed", r.image_id)
    for c in _rows(db, Caption):
        if c.status == "ok":
            add(c.project_id, "captioned", c.image_id)
    for p in _rows(db, PointSet):
        add(p.project_id, "pointed", p.image_id)
    for q in _rows(db, QAPair):
        if q.status == "accepted":
            add(q.project_id, "answered", q.image_id)
    for r in _rows(db, Review):
        pid, image_id, _ = owners[(r.target_type, r.target_id)]
        add(pid, "reviewed", image_id)

    with db.session() as s:
        funnels = curation.funnel(s)
        one = curation.funnel(s, facts["caption_project"])
    assert [f.name for f in funnels] == ["demo-captions", "demo-points", "demo-ask", "demo-explain"]
    for pf in funnels:
        images = len(expected[pf.project_id]["images"])
        assert [s.name for s in pf.stages] == list(curation.FUNNEL_STAGES[pf.kind])
        for stage in pf.stages:
            want = 4 if (stage.name == "exported" and pf.name == "demo-captions") else \
                len(expected.get(pf.project_id, {}).get(stage.name, set()))
            assert stage.count == want, (pf.name, stage.name)
            assert stage.pct_of_images == round(100 * want / images, 1)
    assert funnels[0].count("recorded") == 6 and funnels[0].count("exported") == 4
    assert [(s.name, s.count) for s in one[0].stages] == [(s.name, s.count) for s in funnels[0].stages]


def test_exported_count_reads_counts_or_filters():
    assert exported_count("a", {"project": "a"}, {"images": 7}) == 7
    assert exported_count("a", {"projects": ["a"]}, {"samples": 3}) == 3
    assert exported_count("a", {"projects": ["a", "b"]}, {"images": 9}) is None  # mixed snapshot: unknown share
    assert exported_count("b", {}, {"projects": {"b": {"images": 2}}, "images": 10}) == 2
    assert exported_count("c", {"project": "a"}, {"images": 7}) is None


def test_collection_over_time_totals(seeded):
    db, facts = seeded.db, seeded.facts
    with db.session() as s:
        rows = curation.collection_over_time(s)
        totals = Counter()
        for r in rows:
            totals[r["series"]] += r["count"]
        assert totals["recordings"] == s.scalar(select(func.count()).select_from(Recording))
        assert totals["point_sets"] == s.scalar(select(func.count()).select_from(PointSet))
        assert totals["reviews"] == s.scalar(select(func.count()).select_from(Review))
        assert totals["submissions"] == s.scalar(select(func.count()).select_from(Assignment).where(Assignment.status == "submitted"))
        days = {r.created_at.astimezone(dt.timezone.utc).date().isoformat() if r.created_at.tzinfo else r.created_at.date().isoformat()
                for r in s.scalars(select(Recording))}
        assert {r["day"] for r in rows if r["series"] == "recordings"} == days
        owners = _target_owner(db)
        for project in (facts["points_project"], facts["caption_project"]):
            reviews_here = sum(r["count"] for r in curation.collection_over_time(s, project_id=project)
                               if r["series"] == "reviews")
            assert reviews_here == sum(1 for r in _rows(db, Review) if owners[(r.target_type, r.target_id)][0] == project)
        assert curation.collection_over_time(s, since="2999-01-01") == []
        assert curation.collection_over_time(s, since="2000-01-01") == rows
        with pytest.raises(ValidationError):
            curation.collection_over_time(s, since="last week")


# ------------------------------------------------------------------ annotators


def test_annotator_stats_match_rows(seeded):
    db = seeded.db
    owners = _target_owner(db)
    verdicts = Counter()
    for target, verdict in _current_verdicts(db).items():
        user = owners[target][2]
        if user is not None:
            verdicts[(user, verdict)] += 1
    gold = {pi.image_id: pi.gold_answer for pi in _rows(db, ProjectImage) if pi.is_gold}
    gold_scored, gold_correct = Counter(), Counter()
    for ps in _rows(db, PointSet):
        answer = gold.get(ps.image_id) if ps.project_id == seeded.facts["points_project"] else None
        if answer and ps.label in answer["points"]:
            gold_scored[ps.user_id] += 1
            gold_correct[ps.user_id] += int(ps.image_id == seeded.facts["gold_images"][0])
    with db.session() as s:
        stats = {r.username: r for r in curation.annotator_stats(s)}
        names = dict(s.execute(select(User.id, User.username)).all())
    assert set(stats) == {"ann1", "ann2", "ann3"}
    for uid, name in names.items():
        if name not in stats:
            continue
        r = stats[name]
        subs = [a for a in _rows(db, Assignment) if a.user_id == uid and a.status == "submitted"]
        recs = [x for x in _rows(db, Recording) if x.user_id == uid]
        assert r.submitted == len(subs)
        assert r.active_s == pytest.approx(sum(a.active_seconds for a in subs))
        assert r.recordings == len(recs)
        assert r.audio_s == pytest.approx(sum(x.duration_s for x in recs))
        assert r.point_sets == sum(1 for p in _rows(db, PointSet) if p.user_id == uid)
        assert (r.approved, r.rejected, r.flagged) == (verdicts[(uid, "approved")], verdicts[(uid, "rejected")],
                                                       verdicts[(uid, "flagged")])
        judged = r.approved + r.rejected
        assert r.rejection_rate == (round(r.rejected / judged, 3) if judged else None)
        assert (r.gold_scored, r.gold_correct) == (gold_scored[uid], gold_correct[uid])
        assert r.items_per_hour == pytest.approx(round(3600 * len(subs) / r.active_s, 2))
    assert sum(r.gold_scored for r in stats.values()) == 2
    assert sum(r.gold_correct for r in stats.values()) == 1


def test_outliers_are_marked_robustly():
    rows = [AnnotatorStats(i, f"a{i}", "annotator", submitted=10, active_s=3600.0 * 10 / v)
            for i, v in enumerate([10, 11, 12, 11, 100])]
    mark_outliers(rows)
    assert [r.outliers for r in rows] == [[], [], [], [], ["items_per_hour", "active_s_per_item"]]
    few = [AnnotatorStats(i, f"a{i}", "annotator", submitted=1, active_s=v) for i, v in enumerate([1.0, 100.0])]
    mark_outliers(few)  # two annotators: nothing to compare against
    assert all(r.outliers == [] for r in few)


def test_gold_matching_rules():
    gold = [(0.2, 0.2), (0.8, 0.8)]
    assert curation.points_match([(0.81, 0.79), (0.21, 0.2)], gold)  # order does not matter
    assert not curation.points_match([(0.2, 0.2), (0.2, 0.21)], gold)  # one-to-one, not nearest
    assert not curation.points_match([(0.2, 0.2)], gold)
    assert not curation.points_match([(0.2, 0.2), (0.9, 0.9)], gold, tolerance=0.05)
    assert curation.points_match([(0.2, 0.2), (0.9, 0.9)], gold, tolerance=0.2)
    assert curation.score_point_set([], True, [])  # correctly "not present"
    assert not curation.score_point_set([], True, gold)
    assert not curation.score_point_set([(0.5, 0.5)], False, [])
    assert curation.gold_points({"points": {"cat": [[0.1, 0.2]]}}, "cat") == [(0.1, 0.2)]
    assert curation.gold_points({"label": "cat", "points": []}, "cat") == []
    assert curation.gold_points({"points": {"cat": []}}, "dog") is None
    assert curation.gold_points(None, "cat") is None
    # typed in by hand and malformed: unscored, not a crash of the Annotators page
    assert curation.gold_points({"label": "cat", "points": [0.5, 0.5]}, "cat") is None
    assert curation.gold_points({"points": {"dog": "ab"}}, "dog") is None


# ------------------------------------------------------------------ browse


def _walk(s, filters, limit):
    ids, after, pages = [], None, 0
    while True:
        page = curation.browse_images(s, filters, after_id=after, limit=limit)
        ids += [it.image_id for it in page.items]
        pages += 1
        if page.next_after is None:
            return ids, pages
        after = page.next_after


def test_browse_keyset_pages_cover_everything_once(seeded):
    with seeded.db.session() as s:
        all_ids = list(s.scalars(select(Image.id).order_by(Image.id)))
        ids, pages = _walk(s, curation.BrowseFilters(), 4)
        assert ids == all_ids and pages == 2
        newest, _ = _walk(s, curation.BrowseFilters(newest_first=True), 5)
        assert newest == all_ids[::-1]
        in_project, _ = _walk(s, curation.BrowseFilters(project_id=seeded.facts["points_project"]), 2)
        assert in_project == sorted(s.scalars(select(ProjectImage.image_id).where(
            ProjectImage.project_id == seeded.facts["points_project"])))
        with pytest.raises(ValidationError):
            curation.browse_images(s, limit=0)


def test_browse_filters(seeded):
    db, facts = seeded.db, seeded.facts
    owners = _target_owner(db)
    current = _current_verdicts(db)
    rejected = {owners[t][1] for t, v in current.items() if v == "rejected"}
    flagged_images = {owners[("transcript", t.id)][1] for t in _rows(db, Transcript) if t.flags} | \
        {c.image_id for c in _rows(db, Caption) if c.flags}
    by_ann3 = {x.image_id for model in (Assignment, Recording, PointSet, QAPair) for x in _rows(db, model)
               if x.user_id is not None and x.user_id == _user_id(db, "ann3")}
    first_caption = _rows(db, Caption)[1]
    phrase = " ".join(first_caption.text.split()[2:4]).upper()
    with_phrase = {c.image_id for c in _rows(db, Caption) if phrase.lower() in c.text.lower()}

    def ids(**kw):
        with db.session() as s:
            return {it.image_id for it in curation.browse_images(s, curation.BrowseFilters(**kw), limit=100).items}

    assert ids(flag="no_speech") == {facts["no_speech_image"]}
    assert ids(flag="any") == flagged_images
    assert ids(flag="repetition") == set()
    assert ids(status="gold", project_id=facts["points_project"]) == set(facts["gold_images"])
    assert ids(status="gold", project_id=facts["caption_project"]) == set()
    assert ids(status="flagged") == {owners[("point_set", facts["flagged_point_set"])][1]}
    # review statuses count only reviews of the chosen project's items
    flagged_image = owners[("point_set", facts["flagged_point_set"])][1]
    assert owners[("point_set", facts["flagged_point_set"])][0] == facts["points_project"]
    assert ids(status="flagged", project_id=facts["points_project"]) == {flagged_image}
    assert ids(status="flagged", project_id=facts["caption_project"]) == set()
    for project in (facts["points_project"], facts["caption_project"]):
        reviewed_here = {owners[(r.target_type, r.target_id)][1] for r in _rows(db, Review)
                         if owners[(r.target_type, r.target_id)][0] == project}
        assert ids(status="reviewed", project_id=project) == reviewed_here
        assert ids(status="unreviewed", project_id=project) == ids(project_id=project) - reviewed_here
        rejected_here = {owners[t][1] for t, v in current.items() if v == "rejected" and owners[t][0] == project}
        assert ids(status="rejected", project_id=project) == rejected_here
    assert ids(status="reviewed", project_id=facts["points_project"]) != ids(status="reviewed", project_id=facts["caption_project"])
    assert ids(status="rejected") == rejected
    assert ids(annotator_id=_user_id(db, "ann3")) == by_ann3
    assert ids(text=phrase) == with_phrase and with_phrase
    assert ids(text="100%_no_such") == set()
    assert ids(status="unassigned", project_id=facts["caption_project"]) == set()
    assert ids(status="unassigned", project_id=facts["points_project"]) == ids(project_id=facts["points_project"])
    with pytest.raises(ValidationError):
        ids(status="done")
    assert ids(flag="x'; drop table images") == set()  # any name, compared as a bound value
    with pytest.raises(ValidationError):
        ids(flag="")


def _user_id(db, name):
    with db.session() as s:
        return s.scalar(select(User.id).where(User.username == name))


def test_browse_items_and_detail(seeded):
    db, facts = seeded.db, seeded.facts
    image_id = facts["no_speech_image"]
    with db.session() as s:
        item = next(it for it in curation.browse_images(s, limit=50).items if it.image_id == image_id)
        detail = curation.image_detail(s, image_id)
        with pytest.raises(NotFoundError):
            curation.image_detail(s, 10_000)
    recs = [r for r in _rows(db, Recording) if r.image_id == image_id]
    assert item.recordings == len(recs) == len(detail["recordings"])
    assert item.point_sets == len(detail["point_sets"]) == sum(1 for p in _rows(db, PointSet) if p.image_id == image_id)
    assert {"no_speech", "too_short", "unfaithful"} <= set(item.flags)
    assert detail["recordings"][0]["transcripts"][0]["flags"] == ["no_speech", "too_short"]
    assert detail["recordings"][0]["transcripts"][0]["metrics"]["wpm"] > 0
    assert [r["id"] for r in detail["reviews"]] == sorted(r.id for r in _rows(db, Review) if r.image_id == image_id)
    assert all(r["reviewer"] == "demo-reviewer" for r in detail["reviews"])
    gold = next(p for p in detail["projects"] if p["name"] == "demo-points")
    assert gold["is_gold"] and gold["gold_answer"]["points"]
    targets = curation.review_targets(detail)
    assert ("recording", recs[0].id) in {(t, i) for t, i, _ in targets}
    assert {t for t, _, _ in targets} >= {"recording", "transcript", "caption", "point_set"}


def test_review_targets_offer_only_reviewable_qa_pairs():
    detail = {"recordings": [], "captions": [], "point_sets": [], "assignments": [], "qa_pairs": [
        {"id": 1, "source": "ask", "status": "pending", "question": "what?"},  # an exchange still going on
        {"id": 2, "source": "ask", "status": "rejected", "question": "what else?"},
        {"id": 3, "source": "ask", "status": "accepted", "question": "which one?"},
        {"id": 4, "source": "capqa", "status": "pending", "question": "how many?"},
        {"id": 5, "source": "point_explain", "status": "rejected", "question": "where?"},  # set aside for another
        {"id": 6, "source": "point_explain", "status": "accepted", "question": "where else?"},
    ]}
    assert [i for _, i, _ in curation.review_targets(detail)] == [3, 4, 6]


# ------------------------------------------------------------------ quality


def test_histograms_match_rows(seeded):
    db = seeded.db
    transcripts = [t for t in _rows(db, Transcript) if t.status == "ok"]
    captions = [c for c in _rows(db, Caption) if c.status == "ok"]
    newest = {t.recording_id: t for t in transcripts}.values()  # the speech's measures: once per recording
    reference = {
        "wpm": [t.metrics["wpm"] for t in newest],
        "speech_s": [t.metrics["speech_s"] for t in newest],
        "avg_logprob": [t.metrics["avg_logprob"] for t in transcripts],
        "duration_s": [r.duration_s for r in _rows(db, Recording)],
        "faithfulness": [c.faithfulness.get("score", c.faithfulness.get("supported")) for c in captions],
        "caption_words": [len(c.text.split()) for c in captions],
    }
    with db.session() as s:
        for metric, values in reference.items():
            h = curation.histogram(s, metric, bins=7)
            assert h.total == len(values) == sum(h.counts), metric
            assert h.minimum == pytest.approx(min(values)) and h.maximum == pytest.approx(max(values))
            assert h.mean == pytest.approx(statistics.fmean(values))
            assert len(h.edges) == len(h.counts) + 1 == 8
            for lo, hi, n in zip(h.edges, h.edges[1:], h.counts):  # each bin holds the values in [lo, hi)
                last = hi == h.edges[-1]
                assert n == sum(1 for v in values if lo - 1e-9 <= v < hi - 1e-9 or (last and abs(v - hi) < 1e-9)), metric
        assert curation.histogram(s, "wpm", project_id=seeded.facts["points_project"]).total == 0
        # past max_rows, a systematic sample: the rows whose id is a multiple of k
        sampled = curation.histogram(s, "wpm", bins=3, max_rows=3)
        k = -(-max(t.id for t in _rows(db, Transcript)) // 3)
        assert sampled.sample_every == k > 1
        assert sampled.total == sum(1 for t in transcripts if t.id % k == 0) == sum(sampled.counts)
        with pytest.raises(ValidationError):
            curation.histogram(s, "loudness")


def test_a_small_projects_histogram_is_exact_however_high_the_ids(db):
    """Sampling used to follow the whole table's highest id: a project of 3 captions in a table of
    23 showed 1 of them (every 5th id) with max_rows=5."""
    with db.session() as s:
        im = Image(sha256="d" * 64, storage_key="k", width=4, height=4, mime="image/png", bytes=1)
        s.add(im)
        s.flush()
        big, small = create_project(s, "big", "caption"), create_project(s, "small", "caption")
        for project, texts in ((big, ["a b"] * 20), (small, ["one two three", "one two three four five", "one two"])):
            for i, text in enumerate(texts):
                s.add(Caption(image_id=im.id, project_id=project.id, kind="cleaned", text=text, model=f"{project.name}{i}",
                              prompt_version="v1", produced_by="llm", source_key=""))
        small_id = small.id
    with db.session() as s:
        h = curation.histogram(s, "caption_words", small_id, max_rows=5)
        everything = curation.histogram(s, "caption_words", max_rows=5)
    assert (h.sample_every, h.total, h.mean) == (1, 3, pytest.approx(10 / 3))
    assert everything.sample_every == 5  # 23 rows: still sampled


def test_browse_text_search_ignores_case_in_every_script_and_shows_ok_captions(db):
    with db.session() as s:
        im = Image(sha256="c" * 64, storage_key="k", width=4, height=4, mime="image/png", bytes=1)
        s.add(im)
        s.flush()
        project = create_project(s, "cafes", "caption")
        s.add(Caption(image_id=im.id, project_id=project.id, kind="cleaned", status="failed", error="LLM timeout",
                      text="", model="other", prompt_version="v0"))  # the first caption row: a failed rewrite
        s.flush()
        s.add(Caption(image_id=im.id, project_id=project.id, kind="cleaned", text="Ein Straßencafé mit ÜBERDACHUNG in Köln",
                      model="m", prompt_version="v1"))
        image_id = im.id
    with db.session() as s:
        for query in ("straßencafé", "überdachung", "ÜBERDACHUNG", "köln", "KÖLN", "Café"):
            found = curation.browse_images(s, curation.BrowseFilters(text=query)).items
            assert [i.image_id for i in found] == [image_id], query  # SQLite's LIKE folded only A-Z
        assert curation.browse_images(s, curation.BrowseFilters(text="zürich")).items == []
        (item,) = curation.browse_images(s, curation.BrowseFilters()).items
    assert item.captions == 1 and item.caption.startswith("Ein Straßencafé")  # not the failed row's ''


def test_faithfulness_is_the_score_or_a_numeric_supported(db):
    with db.session() as s:
        im = Image(sha256="9" * 64, storage_key="k", width=4, height=4, mime="image/png", bytes=1)
        s.add(im)
        s.flush()
        for i, faith in enumerate([{"score": 0.5, "supported": ["red", "cat"]}, {"supported": 0.8},
                                   {"supported": ["only", "words"]}, {}]):
            s.add(Caption(image_id=im.id, kind="cleaned", model="m", prompt_version="v", source_key=str(i), text="a b",
                          faithfulness=faith))
    with db.session() as s:
        h = curation.histogram(s, "faithfulness", bins=2)
    assert (h.total, h.minimum, h.maximum) == (2, 0.5, 0.8) and h.mean == pytest.approx(0.65)
    assert curation.faithfulness_score({"score": 0.5, "supported": ["x"]}) == 0.5
    assert curation.faithfulness_score({"supported": ["x"]}) is None and curation.faithfulness_score(None) is None


def test_flag_counts_and_flagged_items(seeded):
    db, facts = seeded.db, seeded.facts
    expected = Counter()
    for t in _rows(db, Transcript):
        expected.update(("transcript", f) for f in t.flags)
    for c in _rows(db, Caption):
        expected.update(("caption", f) for f in c.flags)
    with db.session() as s:
        counts = {(r["source"], r["flag"]): r["count"] for r in curation.flag_counts(s)}
        assert counts == dict(expected)
        rows, more = curation.flagged_items(s, "transcript")
        assert [r["id"] for r in rows] == sorted(facts["flagged_transcripts"], reverse=True) and more is None
        first, after = curation.flagged_items(s, "transcript", limit=1)
        second, end = curation.flagged_items(s, "transcript", limit=1, after_id=after)
        assert [first[0]["id"], second[0]["id"]] == [r["id"] for r in rows] and end is None
        only, _ = curation.flagged_items(s, "transcript", flag="no_speech")
        assert [r["image_id"] for r in only] == [facts["no_speech_image"]]
        caps, _ = curation.flagged_items(s, "caption")
        assert [r["id"] for r in caps] == [facts["flagged_caption"]]
        reviews, _ = curation.flagged_items(s, "review")
        assert [r["target"] for r in reviews] == [f"point_set #{facts['flagged_point_set']}"]
        # a project's flagged reviews are reviews of its items, not of other projects' items on its images
        flagged_image = reviews[0]["image_id"]
        assert s.scalar(select(func.count()).select_from(ProjectImage).where(
            ProjectImage.image_id == flagged_image, ProjectImage.project_id == facts["caption_project"])) == 1
        here, _ = curation.flagged_items(s, "review", project_id=facts["points_project"])
        assert [r["id"] for r in here] == [r["id"] for r in reviews]
        assert curation.flagged_items(s, "review", project_id=facts["caption_project"]) == ([], None)
        with pytest.raises(ValidationError):
            curation.flagged_items(s, "audio")


# ------------------------------------------------------------------ exports


def test_exports_list_and_manifest(seeded):
    with seeded.db.session() as s:
        rows, more = curation.list_exports(s)
    assert more is None and len(rows) == 1
    e = rows[0]
    assert e["snapshot_id"] == "snap-0001" and e["n_shards"] == 2 and e["total_bytes"] == 123456 + 45678
    assert e["filters"]["project"] == "demo-captions" and e["counts"]["images"] == 4
    assert curation.read_manifest(e["output_url"])["snapshot_id"] == "snap-0001"
    assert curation.read_manifest("http://example.invalid/snap") is None  # not a place an export can be
    assert curation.read_manifest(str(seeded.root / "missing")) is None


def test_exports_keyset(db):
    with db.session() as s:
        for i in range(5):
            s.add(Export(snapshot_id=f"s{i}", format="parquet", output_url=f"/x/{i}"))
    with db.session() as s:
        first, before = curation.list_exports(s, limit=3)
        rest, end = curation.list_exports(s, before_id=before, limit=3)
    assert [e["snapshot_id"] for e in first + rest] == ["s4", "s3", "s2", "s1", "s0"] and end is None


# ------------------------------------------------------------------ review actions


@pytest.fixture
def review_world(db):
    with db.session() as s:
        users = {name: create_user(s, name, None, role).id
                 for name, role in [("rev", "reviewer"), ("adm", "admin"), ("ann", "annotator"), ("gone", "reviewer")]}
        s.get(User, users["gone"]).is_active = False
        im = Image(sha256="e" * 64, storage_key="k", width=4, height=4, mime="image/png", bytes=1)
        s.add(im)
        s.flush()
        project = create_project(s, "p", "caption")
        a = Assignment(project_id=project.id, image_id=im.id, user_id=users["ann"], status="submitted")
        s.add(a)
        s.flush()
        rec = Recording(image_id=im.id, user_id=users["ann"], assignment_id=a.id, storage_key="r", sha256="f" * 64,
                        mime="audio/ogg", duration_s=3.0, bytes=10)
        own = Recording(image_id=im.id, user_id=users["rev"], storage_key="r2", sha256="d" * 64, mime="audio/ogg",
                        duration_s=3.0, bytes=10)
        s.add_all([rec, own])
        s.flush()
        tr = Transcript(recording_id=rec.id, asr_model="m", text="hello")
        s.add(tr)
        s.flush()
        tokens = {name: create_token(s, s.get(User, users[name])) for name in ("adm", "ann")}
        return {"users": users, "image": im.id, "recording": rec.id, "own_recording": own.id, "transcript": tr.id,
                "assignment": a.id, "tokens": tokens}


def test_review_actions_write_verdicts(db, review_world):
    w = review_world
    with db.session() as s:
        r1 = curation.submit_review(s, w["users"]["rev"], "recording", w["recording"], "rejected", " too short ")
        assert (r1.image_id, r1.reason, r1.verdict) == (w["image"], "too short", "rejected")
        # the assignment carries the verdict too, so the annotation app frees the image's slot
        assert s.get(Assignment, w["assignment"]).review_verdict == "rejected"
    with db.session() as s:
        curation.submit_review(s, w["users"]["adm"], "transcript", w["transcript"], "flagged")
        assert {it.image_id for it in curation.browse_images(s, curation.BrowseFilters(status="rejected")).items} == {w["image"]}
        curation.submit_review(s, w["users"]["rev"], "recording", w["recording"], "approved")
    with db.session() as s:
        rows = list(s.execute(select(Review.target_type, Review.verdict, Review.reviewer_id).order_by(Review.id)))
        assert rows == [("recording", "rejected", w["users"]["rev"]), ("transcript", "flagged", w["users"]["adm"]),
                        ("recording", "approved", w["users"]["rev"])]
        # the newest verdict is the current one; the history stays
        assert curation.browse_images(s, curation.BrowseFilters(status="rejected")).items == []
        assert len(curation.image_detail(s, w["image"])["reviews"]) == 3
        stats = {r.username: r for r in curation.annotator_stats(s)}
        assert (stats["ann"].approved, stats["ann"].rejected, stats["ann"].flagged) == (1, 0, 1)
    # a verdict on the assignment itself is the assignment's verdict too (it was left as it was)
    with db.session() as s:
        curation.submit_review(s, w["users"]["rev"], "assignment", w["assignment"], "rejected", "off-task")
        assert s.get(Assignment, w["assignment"]).review_verdict == "rejected"
    # one judgement of the task, written on the task and on its recording, counts once (it counted
    # twice in the annotator's rejections and rate, and in the reviews per day)
    with db.session() as s:
        stats = {r.username: r for r in curation.annotator_stats(s)}
        assert (stats["ann"].approved, stats["ann"].rejected) == (0, 1)
        series = curation.collection_over_time(s)
        assert sum(r["count"] for r in series if r["series"] == "reviews") == 4  # 3 above and the task's one


def test_assignment_verdict_is_its_worst_current_item_verdict(db, review_world):
    """Approving one item of a submission does not undo the rejection of another: the task stays
    rejected (its slot free) until the rejected item itself is approved, or the whole task is (a
    verdict on the task is one on each of its items)."""
    w = review_world
    with db.session() as s:
        ps = PointSet(image_id=w["image"], user_id=w["users"]["ann"], assignment_id=w["assignment"], label="cat",
                      points=[[0.5, 0.5]], method="pointing")
        s.add(ps)
        s.flush()
        ps_id = ps.id
    rev = w["users"]["rev"]
    steps = [
        ("recording", w["recording"], "rejected", "rejected"),
        ("point_set", ps_id, "approved", "rejected"),  # was: approved (the last verdict won)
        ("assignment", w["assignment"], "approved", "approved"),  # the whole task: its items too
        ("recording", w["recording"], "rejected", "rejected"),
        ("recording", w["recording"], "flagged", "flagged"),
        ("recording", w["recording"], "approved", "approved"),
        ("point_set", ps_id, "rejected", "rejected"),
        ("assignment", w["assignment"], "rejected", "rejected"),
        ("point_set", ps_id, "approved", "rejected"),  # the task itself (and its recording) still rejected
        ("assignment", w["assignment"], "approved", "approved"),
    ]
    for target, target_id, verdict, expected in steps:
        with db.session() as s:
            curation.submit_review(s, rev, target, target_id, verdict, "why" if verdict == "rejected" else "")
        with db.session() as s:
            assert s.get(Assignment, w["assignment"]).review_verdict == expected, (target, verdict)


def test_speech_per_recording_counts_only_transcribed_recordings(db, review_world):
    w = review_world
    with db.session() as s:
        s.get(Transcript, w["transcript"]).metrics = {"speech_s": 6.0, "wpm": 120.0}
        s.add(Recording(image_id=w["image"], user_id=w["users"]["ann"], storage_key="r3", sha256="c" * 64,
                        mime="audio/ogg", duration_s=3.0, bytes=10))  # not transcribed yet
    with db.session() as s:
        ann = {r.username: r for r in curation.annotator_stats(s)}["ann"]
    assert (ann.recordings, ann.speech_s) == (2, 6.0)
    assert ann.speech_s_per_recording == 6.0  # was 3.0: the untranscribed recording counted as silence


@pytest.mark.parametrize(
    ("who", "target", "verdict", "reason", "error"),
    [
        ("ann", "recording", "approved", "", curation.NotAllowedError),
        ("gone", "recording", "approved", "", curation.NotAllowedError),
        (None, "recording", "approved", "", curation.NotAllowedError),
        ("rev", "recording", "rejected", "  ", ValidationError),
        ("rev", "recording", "maybe", "", ValidationError),
        ("rev", "image", "approved", "", ValidationError),
        ("rev", "caption", "approved", "", NotFoundError),
        ("rev", "own", "approved", "", ValidationError),
    ],
)
def test_review_actions_are_refused(db, review_world, who, target, verdict, reason, error):
    w = review_world
    user_id = w["users"].get(who) if who else None
    target_id = {"recording": w["recording"], "own": w["own_recording"]}.get(target, 999)
    target = "recording" if target == "own" else target
    with pytest.raises(error), db.session() as s:
        curation.submit_review(s, user_id, target, target_id, verdict, reason)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Review)) == 0


def test_dashboard_login_only_for_reviewers(db, review_world):
    tokens = review_world["tokens"]
    with db.session() as s:
        password_hash = hash_password("password-123")  # hashed once: argon2 is slow on purpose
        for user_id in review_world["users"].values():
            s.get(User, user_id).password_hash = password_hash
    assert curation.login(db, "rev", "password-123").role == "reviewer"
    assert curation.login_with_token(db, tokens["adm"]).username == "adm"
    for attempt in (lambda: curation.login(db, "ann", "password-123"), lambda: curation.login(db, "rev", "wrong-pass"),
                    lambda: curation.login(db, "gone", "password-123"), lambda: curation.login_with_token(db, tokens["ann"]),
                    lambda: curation.login_with_token(db, "pixmo_nope")):
        with pytest.raises(curation.NotAllowedError):
            attempt()
    with db.session() as s:  # every password try is recorded, refused ones too
        tries = list(s.execute(select(LoginAttempt.username, LoginAttempt.ok).order_by(LoginAttempt.id)))
    assert tries == [("rev", True), ("ann", True), ("rev", False), ("gone", False)]


def test_a_dashboard_login_ends_with_its_session_or_token(db, review_world):
    from pixmo.users import revoke_tokens, set_password

    tokens = review_world["tokens"]
    with db.session() as s:
        s.get(User, review_world["users"]["rev"]).password_hash = hash_password("password-123")
    by_password = curation.login(db, "rev", "password-123")
    by_token = curation.login_with_token(db, tokens["adm"])
    for r in (by_password, by_token):
        with db.session() as s:
            assert curation.reviewer_for_login(s, r.id, r.login) == r
    with db.session() as s, pytest.raises(curation.NotAllowedError, match="login has ended"):
        curation.reviewer_for_login(s, by_password.id, None)  # a remembered id alone is not a login
    with db.session() as s:
        set_password(s, "rev", "another-password")  # ends rev's sessions, the dashboard's too
        revoke_tokens(s, "adm")
    for r in (by_password, by_token):
        with db.session() as s, pytest.raises(curation.NotAllowedError, match="login has ended"):
            curation.reviewer_for_login(s, r.id, r.login)
    again = curation.login(db, "rev", "another-password")
    curation.logout(db, again.login)  # ends the server-side session
    with db.session() as s, pytest.raises(curation.NotAllowedError):
        curation.reviewer_for_login(s, again.id, again.login)


def test_dashboard_login_is_throttled(db, review_world):
    with db.session() as s:
        s.add_all(LoginAttempt(username="rev", ip="10.0.0.9", ok=False) for _ in range(MAX_FAILURES_PER_USER_IP))
    with pytest.raises(curation.NotAllowedError, match="too many failed logins"):
        curation.login(db, "rev", "anything", ip="10.0.0.9")


# ------------------------------------------------------------------ drawing and serving


def test_draw_point_sets_one_colour_per_label():
    buf = io.BytesIO()
    PILImage.new("RGB", (2000, 1000), "white").save(buf, "PNG")
    sets = [{"label": "cat", "points": [[0.5, 0.5]]}, {"label": "dog", "points": [[0.1, 0.2], [0.9, 0.8]]},
            {"label": "bird", "points": []}]
    png, colors = curation.draw_point_sets(buf.getvalue(), sets, max_side=1000)
    assert list(colors) == ["cat", "dog"] and colors["cat"] != colors["dog"]
    im = PILImage.open(io.BytesIO(png)).convert("RGB")
    assert im.size == (1000, 500)

    def rgb(hex_color):
        return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))

    assert im.getpixel((500, 250)) == rgb(colors["cat"])
    assert im.getpixel((100, 100)) == rgb(colors["dog"]) and im.getpixel((900, 400)) == rgb(colors["dog"])
    assert im.getpixel((300, 300)) == (255, 255, 255)


def test_serve_command_and_env(tmp_path, monkeypatch):
    from pixmo.commands.dashboard import app_path

    APP_PATH = app_path()
    from pixmo.config import get_settings

    monkeypatch.setenv("PIXMO_DATABASE_URL", "sqlite:////data/x.db")
    get_settings.cache_clear()
    cmd = streamlit_command(APP_PATH, "127.0.0.1", 8600)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(APP_PATH)
    assert cmd[cmd.index("--server.port") + 1] == "8600" and cmd[cmd.index("--server.headless") + 1] == "true"
    env = dashboard_env(APP_PATH, base={"PYTHONPATH": "/elsewhere"})
    assert env["PIXMO_DATABASE_URL"] == "sqlite:////data/x.db"
    assert env["PIXMO_STORAGE_URL"].startswith("file://")
    assert env["PYTHONPATH"].split(":") == [str(APP_PATH.parent.parent), "/elsewhere"]
    with pytest.raises(ConfigError):
        serve_dashboard(APP_PATH, port=70000)


def test_cli_dashboard_command():
    from typer.testing import CliRunner

    from pixmo.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["dashboard", "--help"])
    assert result.exit_code == 0 and "--port" in result.output and "--host" in result.output
    refused = runner.invoke(app, ["dashboard", "--port", "0"])
    assert refused.exit_code == 2 and "out of range" in refused.output


def test_known_flags_are_the_flags_the_steps_write():
    from pixmo.asr.quality import FLAGS as TRANSCRIPT_FLAGS
    from pixmo.curation.sql import KNOWN_FLAGS
    from pixmo.llm.faithfulness import FLAGS as CAPTION_FLAGS

    assert KNOWN_FLAGS == (*TRANSCRIPT_FLAGS, *CAPTION_FLAGS)


def test_nobody_judges_a_caption_or_capqa_pair_made_from_their_own_speech(db, review_world):
    """Captions and CapQA pairs have no annotator of their own, so the check never ran: a reviewer
    who also recorded could approve the caption of their own speech (and overturn a rejection)."""
    w = review_world
    with db.session() as s:
        own_tr = Transcript(recording_id=w["own_recording"], asr_model="m", text="mine")
        s.add(own_tr)
        s.flush()
        project_id = s.get(Recording, w["own_recording"]).project_id
        both = Caption(image_id=w["image"], project_id=project_id, kind="merged", text="both of us", model="llm",
                       prompt_version="merge-v1", source_transcript_ids=[w["transcript"], own_tr.id])
        theirs = Caption(image_id=w["image"], project_id=project_id, kind="cleaned", text="theirs", model="llm",
                         prompt_version="clean-v1", source_transcript_ids=[w["transcript"]])
        s.add_all([both, theirs])
        s.flush()
        qa = QAPair(image_id=w["image"], project_id=project_id, source="capqa", question="Q?", answer="A.",
                    caption_id=both.id, model="llm", prompt_version="capqa-v1", status="accepted")
        s.add(qa)
        s.flush()
        ids = {"both": both.id, "theirs": theirs.id, "qa": qa.id}
    for target, target_id in (("caption", ids["both"]), ("qa_pair", ids["qa"])):
        with pytest.raises(ValidationError, match="own work"), db.session() as s:
            curation.submit_review(s, w["users"]["rev"], target, target_id, "approved")
    with db.session() as s:  # another reviewer may; and so may this one, of someone else's caption
        curation.submit_review(s, w["users"]["adm"], "caption", ids["both"], "approved")
        curation.submit_review(s, w["users"]["adm"], "qa_pair", ids["qa"], "approved")
        curation.submit_review(s, w["users"]["rev"], "caption", ids["theirs"], "approved")
        assert s.scalar(select(func.count()).select_from(Review)) == 3


def test_qa_counts_are_accepted_answers_and_a_task_verdict_counts_once(db, review_world):
    """The daily series counted the model's CapQA pairs and answers set aside as people's work, and
    Browse counted those set aside as QA and a verdict on a task twice (on the task and its item)."""
    w = review_world
    with db.session() as s:
        project = create_project(s, "asks", "ask")
        a = Assignment(project_id=project.id, image_id=w["image"], user_id=w["users"]["ann"], status="submitted")
        s.add_all([a, ProjectImage(project_id=project.id, image_id=w["image"])])
        s.flush()
        common = {"image_id": w["image"], "project_id": project.id, "question": "Q?", "answer": "A."}
        s.add_all([
            QAPair(**common, source="ask", status="accepted", user_id=w["users"]["ann"], assignment_id=a.id),
            QAPair(**common, source="ask", status="rejected", user_id=w["users"]["ann"], assignment_id=a.id),
            QAPair(**common, source="capqa", status="accepted", model="llm", prompt_version="capqa-v1"),
        ])
        s.flush()
        curation.submit_review(s, w["users"]["rev"], "assignment", a.id, "rejected", "off-task")
    with db.session() as s:
        series = curation.collection_over_time(s, project.id)
        (item,) = curation.browse_images(s, curation.BrowseFilters(project_id=project.id)).items
    assert [r["count"] for r in series if r["series"] == "qa_pairs"] == [1]
    assert item.qa_pairs == 2  # the accepted answer and the CapQA pair
    assert (item.reviews, item.verdicts) == (1, {"rejected": 1})


def test_speech_measures_count_each_recording_once_and_hand_set_flags_can_be_picked(db, review_world):
    """A recording transcribed again by a second model counted twice in the speech histograms; a
    flag stored by hand ("needs review") was listed on the Quality page and crashed it when picked."""
    w = review_world
    metrics = {"speech_s": 3.0, "avg_logprob": -0.2, "no_speech_prob": 0.1}
    with db.session() as s:
        s.get(Transcript, w["transcript"]).metrics = {**metrics, "wpm": 100.0}
        s.add(Transcript(recording_id=w["recording"], asr_model="m2", text="hello again",
                         metrics={**metrics, "wpm": 140.0}, flags=["needs review"]))
    with db.session() as s:
        wpm, logprob = curation.histogram(s, "wpm"), curation.histogram(s, "avg_logprob")
        assert (wpm.total, wpm.mean) == (1, 140.0) and logprob.total == 2
        assert {"source": "transcript", "flag": "needs review", "count": 1} in curation.flag_counts(s)
        items, _ = curation.flagged_items(s, "transcript", "needs review")
        assert len(items) == 1
        found = curation.browse_images(s, curation.BrowseFilters(flag="needs review")).items
        assert [i.image_id for i in found] == [w["image"]]
