"""Seeded data for the dashboard tests: the demo dataset plus gold items, quality flags, a flagged
review and an export snapshot (with its manifest file), so every page has something to show."""

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from pixmo.db.models import Caption, Export, PointSet, Project, ProjectImage, Recording, Review, Transcript, User
from pixmo.db.session import Database
from pixmo.demo import CAPTION_PROJECT, POINTS_PROJECT, create_demo
from pixmo.storage import BlobStore, LocalStore
from tests.conftest import BACKENDS, PG_URL, _drop_schema, _postgres_db, _sqlite_db

DEMO_IMAGES = 6
PASSWORD = "demo-password"


def seed_curation(db: Database, store: BlobStore, export_dir: Path, n_images: int = DEMO_IMAGES) -> dict:
    """Create the demo data and the extras; returns ids the tests refer to."""
    create_demo(db, store, n_images, speech=False)
    facts: dict = {}
    with db.session() as s:
        points_project = s.scalars(select(Project).where(Project.name == POINTS_PROJECT)).one()
        caption_project = s.scalars(select(Project).where(Project.name == CAPTION_PROJECT)).one()
        reviewer = s.scalars(select(User).where(User.username == "demo-reviewer")).one()
        # Gold: the first pointed image's answer matches its point set, the second's is off by 0.2.
        sets = list(s.scalars(select(PointSet).where(PointSet.project_id == points_project.id, PointSet.not_present.is_(False))
                              .order_by(PointSet.id)))
        by_image: dict[int, PointSet] = {}
        for ps in sets:
            by_image.setdefault(ps.image_id, ps)
        (good_image, good), (bad_image, bad) = list(by_image.items())[:2]
        for image_id, ps, shift in ((good_image, good, 0.0), (bad_image, bad, 0.2)):
            pi = s.scalars(select(ProjectImage).where(ProjectImage.project_id == points_project.id,
                                                      ProjectImage.image_id == image_id)).one()
            pi.is_gold = True
            pi.gold_answer = {"points": {ps.label: [[min(1.0, x + shift), y] for x, y in ps.points]}}
        facts["gold_images"] = [good_image, bad_image]
        # Quality flags on two transcripts and one caption.
        transcripts = list(s.scalars(select(Transcript).order_by(Transcript.id)))
        transcripts[0].flags = ["no_speech", "too_short"]
        transcripts[1].flags = ["wpm_outlier"]
        caption = s.scalars(select(Caption).order_by(Caption.id)).first()
        caption.flags = ["unfaithful"]
        # as the rewrite stage stores it: the share as "score", the supported words as "supported"
        caption.faithfulness = {"score": 0.4, "supported": ["portrait", "astronaut"], "added": ["a purple dog"]}
        facts["flagged_transcripts"] = [transcripts[0].id, transcripts[1].id]
        facts["flagged_caption"] = caption.id
        facts["no_speech_image"] = s.scalar(select(Recording.image_id).where(Recording.id == transcripts[0].recording_id))
        # A point set flagged by the reviewer.
        s.add(Review(target_type="point_set", target_id=bad.id, image_id=bad.image_id, reviewer_id=reviewer.id,
                     verdict="flagged", reason="points look shifted"))
        facts["flagged_point_set"] = bad.id
        # An export snapshot of the caption project, its manifest on disk.
        export_dir.mkdir(parents=True, exist_ok=True)
        shards = [{"name": "shard-000000.tar", "sha256": "a" * 64, "count": 3, "bytes": 123456},
                  {"name": "shard-000001.tar", "sha256": "b" * 64, "count": 1, "bytes": 45678}]
        manifest = {"snapshot_id": "snap-0001", "format": "webdataset", "shards": shards, "counts": {"images": 4}}
        (export_dir / "manifest.json").write_text(json.dumps(manifest))
        s.add(Export(snapshot_id="snap-0001", format="webdataset", output_url=str(export_dir),
                     filters={"project": caption_project.name, "review_status": ["approved", "pending"]},
                     counts={"images": 4, "samples": 4, "captions": 5}, versions={"asr_models": ["demo/synthetic"]},
                     shards=shards, manifest_sha256="c" * 64))
        facts["points_project"], facts["caption_project"] = points_project.id, caption_project.id
    return facts


def copy_sqlite(src_url: str, dst: Path) -> str:
    """Copy a (disposed) SQLite database file; returns the copy's URL."""
    src = Path(src_url.removeprefix("sqlite:///"))
    shutil.copy(src, dst)
    return f"sqlite:///{dst}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Seeded:
    db: Database
    store: LocalStore
    facts: dict
    root: Path


@pytest.fixture(scope="module", params=BACKENDS)
def seeded(request, tmp_path_factory, sqlite_template) -> Seeded:
    """A seeded database shared by the read-only tests of a module (SQLite, and PostgreSQL when set)."""
    root = tmp_path_factory.mktemp("curation")
    schema = None
    if request.param == "sqlite":
        database = _sqlite_db(root, sqlite_template)
    else:
        if not PG_URL:
            pytest.skip("PostgreSQL: set PIXMO_TEST_POSTGRES_URL (make test does when it answers)")
        database, schema = _postgres_db()
    store = LocalStore(root / "blobs", secret="test-secret-for-signing", public_url="http://testserver")
    facts = seed_curation(database, store, root / "export")
    yield Seeded(database, store, facts, root)
    database.dispose()
    if schema:
        _drop_schema(schema)
