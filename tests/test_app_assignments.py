"""Leasing work (pixmo.assignments) on SQLite and PostgreSQL, including under concurrency."""

from __future__ import annotations

import datetime as dt
import math
import threading
import time

import pytest
from sqlalchemy import func, select, update

from pixmo.assignments import (
    GOLD_BLOCK,
    LeaseError,
    expire_leases,
    gold_due,
    next_assignment,
    project_progress,
    skip_assignment,
    user_stats,
)
from pixmo.db.models import Assignment, Project, utcnow
from pixmo.reviews import record_review
from pixmo.submissions import submit_points
from pixmo.projects import attach_images
from tests.app_helpers import add_images, add_users, make_project


def _ask_at_once(db, project_id: int, users: dict[str, int]) -> dict[str, object]:
    barrier = threading.Barrier(len(users))
    results: dict[str, object] = {}
    errors: list[BaseException] = []

    def ask(name: str, uid: int) -> None:
        try:
            barrier.wait()
            lease = next_assignment(db, project_id, uid)
            results[name] = lease.assignment.id if lease else None
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=item) for item in users.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_twenty_annotators_one_image_overlap_two(db, store):
    """20 annotators ask at once for the only image of a project with overlap 2: exactly 2 get it."""
    project_id, _ = make_project(db, store, "one-image", "caption", n_images=1, overlap=2)
    users = add_users(db, [(f"u{i:02d}", "annotator") for i in range(20)], password=None)
    results = _ask_at_once(db, project_id, users)
    got = [n for n, a in results.items() if a is not None]
    assert len(results) == 20 and len(got) == 2
    with db.session() as s:
        rows = s.scalars(select(Assignment)).all()
        assert len(rows) == 2 and len({r.user_id for r in rows}) == 2


def test_twenty_annotators_ten_images_overlap_two(db, store):
    """Enough work for everyone: all 20 get a lease at once and every image is held exactly twice."""
    project_id, images = make_project(db, store, "ten-images", "caption", n_images=10, overlap=2)
    users = add_users(db, [(f"u{i:02d}", "annotator") for i in range(20)], password=None)
    results = _ask_at_once(db, project_id, users)
    assert all(a is not None for a in results.values())
    with db.session() as s:
        per_image = dict(s.execute(select(Assignment.image_id, func.count()).group_by(Assignment.image_id)).all())
    assert per_image == {i: 2 for i in images}


def test_rules_never_same_image_twice_overlap_skip_and_resume(db, store):
    project_id, images = make_project(db, store, "p", "caption", n_images=2, overlap=1)
    users = add_users(db, [("a", "annotator"), ("b", "annotator")], password=None)
    first = next_assignment(db, project_id, users["a"])
    again = next_assignment(db, project_id, users["a"])
    assert again.resumed and again.assignment.id == first.assignment.id  # a live lease is returned, not a new one
    other = next_assignment(db, project_id, users["b"])
    assert other.assignment.image_id != first.assignment.image_id  # overlap 1: a leased image is not offered
    skip_assignment(db, first.assignment.id, users["a"], "blurry")
    # b holds the other image, a skipped this one: a gets nothing, and the skip is recorded
    assert next_assignment(db, project_id, users["a"]) is None
    with db.session() as s:
        skipped = s.get(Assignment, first.assignment.id)
        assert skipped.status == "skipped" and skipped.skip_reason == "blurry"
    # the skipped image is free again for someone else
    c = add_users(db, [("c", "annotator")], password=None)["c"]
    assert next_assignment(db, project_id, c).assignment.image_id == first.assignment.image_id


def test_expired_lease_returns_image_to_pool(db, store):
    project_id, _ = make_project(db, store, "p", "caption", n_images=1, overlap=1)
    users = add_users(db, [("a", "annotator"), ("b", "annotator")], password=None)
    lease = next_assignment(db, project_id, users["a"])
    assert next_assignment(db, project_id, users["b"]) is None
    with db.session() as s:
        s.execute(update(Assignment).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    again = next_assignment(db, project_id, users["b"])
    assert again is not None and again.assignment.image_id == lease.assignment.image_id
    with db.session() as s:
        assert s.get(Assignment, lease.assignment.id).status == "expired"
    assert expire_leases(db) == 0


def test_gold_items_are_mixed_in_at_the_fraction_where_annotators_cannot_predict(db, store):
    project_id, _ = make_project(db, store, "p", "points", n_images=40, gold=12, overlap=2, gold_fraction=0.25)
    users = add_users(db, [("a", "annotator"), ("b", "annotator")], password=None)
    golds = {}
    for name, uid in users.items():
        golds[name] = []
        for _ in range(GOLD_BLOCK + 4):
            lease = next_assignment(db, project_id, uid, secret="s3cret")
            golds[name].append(lease.assignment.is_gold)
            submit_points(db, assignment_id=lease.assignment.id, user_id=uid, label="x", points=[[0.5, 0.5]])
        # exactly the share in each block of GOLD_BLOCK tasks
        assert golds[name][:GOLD_BLOCK].count(True) == GOLD_BLOCK // 4
    # at places that differ from user to user (and from the old fixed every-4th pattern)
    fixed = [k % 4 == 3 for k in range(GOLD_BLOCK + 4)]
    assert golds["a"] != golds["b"] and fixed not in golds.values()


def test_gold_due_keeps_the_share_and_depends_on_the_key():
    for fraction in (0.05, 0.1, 0.15, 0.25, 1 / 3, 0.5, 0.9, 1.0):
        for key in (b"a", b"b"):
            due = [gold_due(fraction, k, key) for k in range(0, 5 * GOLD_BLOCK + 1)]
            assert all(0 <= due[k + 1] - due[k] <= 1 for k in range(len(due) - 1))  # one task adds at most one
            for block in range(1, 6):  # whole blocks hold exactly their share
                assert due[block * GOLD_BLOCK] == math.floor(round(fraction * block * GOLD_BLOCK, 9))
    patterns = {tuple(gold_due(0.25, k, bytes([i])) for k in range(1, GOLD_BLOCK + 1)) for i in range(20)}
    assert len(patterns) > 10  # the places follow the key
    assert gold_due(0.0, 10, b"a") == 0


def test_rejected_work_returns_to_the_queue_and_stats(db, store):
    project_id, _ = make_project(db, store, "p", "points", n_images=1, overlap=1)
    users = add_users(db, [("a", "annotator"), ("b", "annotator"), ("r", "reviewer")], password=None)
    lease = next_assignment(db, project_id, users["a"])
    ps = submit_points(db, assignment_id=lease.assignment.id, user_id=users["a"], label="cat", points=[[0.1, 0.2]],
                       active_seconds=12.5)
    assert next_assignment(db, project_id, users["b"]) is None
    record_review(db, users["r"], "point_set", ps.id, "rejected", "wrong object")
    assert next_assignment(db, project_id, users["b"]) is not None
    with db.session() as s:
        stats = user_stats(s, users["a"])
        progress = project_progress(s, s.get(Project, project_id))
        assert s.scalar(select(func.count()).select_from(Assignment)) == 2
    assert stats["total"]["rejected"] == 1 and stats["total"]["rejection_rate"] == 1.0
    assert progress["rejected"] == 1 and progress["leased"] == 1 and progress["complete_images"] == 0


def test_a_label_whose_answer_was_rejected_is_asked_again(db, store):
    """The label a pointing task asks for is the one with the fewest answers on the image; a
    rejected answer counted, so the slot its rejection freed went to a label answered already and
    the image read as complete with no usable answer for the other."""
    from pixmo.submissions import task_label

    project_id, _ = make_project(db, store, "p", "points", n_images=1, overlap=3, labels=["car", "dog"])
    users = add_users(db, [("a", "annotator"), ("b", "annotator"), ("c", "annotator"), ("r", "reviewer")],
                      password=None)
    done = {}
    for name, label in (("a", "car"), ("b", "dog")):
        lease = next_assignment(db, project_id, users[name])
        done[name] = submit_points(db, assignment_id=lease.assignment.id, user_id=users[name], label=label,
                                   points=[[0.1, 0.2]])
    record_review(db, users["r"], "point_set", done["a"].id, "rejected", "that is a van")
    third = next_assignment(db, project_id, users["c"])
    with db.session() as s:
        assert task_label(s, s.get(Assignment, third.assignment.id)) == "car"


def test_a_late_submission_never_doubles_an_annotator(db, store):
    project_id, _ = make_project(db, store, "p", "points", n_images=1, overlap=2)
    uid = add_users(db, [("a", "annotator")], password=None)["a"]
    old = next_assignment(db, project_id, uid)
    with db.session() as s:
        s.execute(update(Assignment).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    new = next_assignment(db, project_id, uid)  # the same image again, in a new lease
    assert new.assignment.id != old.assignment.id and new.assignment.image_id == old.assignment.image_id
    with pytest.raises(LeaseError, match="newer task"):
        submit_points(db, assignment_id=old.assignment.id, user_id=uid, label="x", points=[[0.5, 0.5]])
    submit_points(db, assignment_id=new.assignment.id, user_id=uid, label="x", points=[[0.5, 0.5]])


def test_a_submission_that_waited_for_the_lock_past_its_lease_is_checked_at_the_time_it_got_it(db, store, monkeypatch):
    """The clock is read once the assignment row is locked: a submission that computed 'now' before
    waiting would find its lease still live, skip the capacity check and put a second annotator on an
    image of overlap 1 that someone else took over meanwhile."""
    import pixmo.submissions as submissions

    project_id, _ = make_project(db, store, "p", "points", n_images=1, overlap=1, labels=["cat"])
    users = add_users(db, [("a", "annotator"), ("b", "annotator")], password=None)
    lease = next_assignment(db, project_id, users["a"])
    real_now = utcnow()
    with db.session() as s:  # a's lease ran out while the submission waited; b took the image over
        a = s.get(Assignment, lease.assignment.id)
        a.expires_at = real_now - dt.timedelta(minutes=1)
        s.add(Assignment(project_id=project_id, image_id=a.image_id, user_id=users["b"], status="leased",
                         expires_at=real_now + dt.timedelta(minutes=30)))
    locked = []
    real_get = submissions.get_assignment

    def get_assignment(session, assignment_id, user_id, lock=False):
        row = real_get(session, assignment_id, user_id, lock=lock)
        locked.append(lock)
        return row

    # before the lock is held the clock reads a time when a's lease was still live
    monkeypatch.setattr(submissions, "utcnow",
                        lambda: utcnow() if any(locked) else real_now - dt.timedelta(minutes=2))
    monkeypatch.setattr(submissions, "get_assignment", get_assignment)
    with pytest.raises(LeaseError, match="went to someone else"):
        submit_points(db, assignment_id=lease.assignment.id, user_id=users["a"], label="cat", points=[[0.5, 0.5]])
    with db.session() as s:
        statuses = dict(s.execute(select(Assignment.user_id, Assignment.status)).all())
    assert statuses == {users["a"]: "leased", users["b"]: "leased"}


def test_a_question_answered_after_the_task_was_skipped_is_not_stored(db, store, monkeypatch):
    """The model answers outside any transaction: a task skipped (in another tab) meanwhile got a
    pending question attached to it."""
    import pixmo.ask as ask
    from pixmo.db.models import QAPair

    project_id, _ = make_project(db, store, "ama", "ask", n_images=1)
    users = add_users(db, [("a", "annotator")], password=None)
    lease = next_assignment(db, project_id, users["a"])
    monkeypatch.setattr(ask, "image_context", lambda db, store, image_id: ask.ImageContext(None, "a cat", ""))

    class SlowModel:
        def answer(self, question, caption, ocr_text):
            skip_assignment(db, lease.assignment.id, users["a"], "changed my mind")  # meanwhile, elsewhere
            return ask.Answer("A cat.", "m", "ask-v1")

    with pytest.raises(LeaseError, match="this task was skipped"):
        ask.ask_question(db, store, SlowModel(), assignment_id=lease.assignment.id, user_id=users["a"],
                         question="What animal is it?")
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(QAPair)) == 0


def test_gold_after_a_dry_spell_does_not_come_in_a_run(db, store):
    project_id, _ = make_project(db, store, "p", "points", n_images=60, gold=2, overlap=1, gold_fraction=0.2)
    uid = add_users(db, [("a", "annotator")], password=None)["a"]

    def do(n: int) -> list[bool]:
        out = []
        for _ in range(n):
            lease = next_assignment(db, project_id, uid, secret="k")
            out.append(lease.assignment.is_gold)
            submit_points(db, assignment_id=lease.assignment.id, user_id=uid, label="x", points=[[0.5, 0.5]])
        return out

    first = do(2 * GOLD_BLOCK)  # both gold items early, then none left for a while
    assert first.count(True) == 2
    new_gold = add_images(db, store, 15, seed=50)
    with db.session() as s:  # new gold items arrive
        attach_images(s, s.get(Project, project_id), new_gold, gold=True)
    after = do(GOLD_BLOCK)
    assert after.count(True) == GOLD_BLOCK // 5  # the block's own share, not the whole backlog at once


def test_one_user_never_holds_two_live_leases_of_a_project_at_once(db, store, monkeypatch):
    import pixmo.assignments

    project_id, _ = make_project(db, store, "p", "points", n_images=4, overlap=1)
    uid = add_users(db, [("a", "annotator")], password=None)["a"]
    expire = pixmo.assignments._expire

    def slow_expire(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        time.sleep(0.3)  # widens the window between "no live lease yet" and the insert
        return expire(*args, **kwargs)

    monkeypatch.setattr(pixmo.assignments, "_expire", slow_expire)
    leases = []
    threads = [threading.Thread(target=lambda: leases.append(next_assignment(db, project_id, uid))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with db.session() as s:
        live = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.status == "leased"))
    assert live == 1 and len({lease.assignment.id for lease in leases}) == 1
