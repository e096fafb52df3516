"""Ingest stage: files from a folder → validated, deduplicated images in the blob store.

Reader (walk the folder) → workers (read, sha256, Pillow validation, blob write; threads, since
hashing and decoding release the GIL) → writer (image rows, project links and one status row
per file, a transaction per batch). Rerunning is safe: content already stored is reported as
``exists`` and nothing is added.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from pixmo.db.models import Image, IngestItem, Project
from pixmo.db.queries import insert_ignore_returning
from pixmo.db.session import Database
from pixmo.errors import ValidationError
from pixmo.media import ImageInfo, ImageRejected, probe_image
from pixmo.projects import attach_images
from pixmo.storage import BlobStore, content_key
from pipelines.base import Stage


@dataclass(frozen=True)
class IngestFolderParams:
    path: str
    project: str | None = None
    source: str = "folder"
    max_pixels: int = 100_000_000
    max_bytes: int = 200 * 1024 * 1024
    # threads, not cores: blob writes wait on fsync while others decode (4 measured best on 2 cores)
    workers: int = 4


@dataclass
class FileResult:
    ref: str
    status: str  # stored | exists | duplicate | rejected
    reason: str | None = None
    detail: str = ""
    sha256: str | None = None
    info: ImageInfo | None = None
    size: int = 0
    key: str | None = None


def walk_files(root: Path) -> Iterator[Path]:
    """Every file below ``root`` in a stable order (hidden names skipped), then every folder that
    could not be listed (so that it is reported, not silently skipped). Links to folders are
    followed, as links to files are; a folder reached twice (a link loop, two links to one place)
    is walked once."""
    unlisted: list[OSError] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted.append, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name
    for exc in unlisted:
        if exc.filename:
            yield Path(exc.filename)


class IngestFolder(Stage[Path, FileResult]):
    """Validate and store every image file below a folder; optionally attach them to a project."""

    kind = "ingest"
    batch_size = 128

    def __init__(self, db: Database, store: BlobStore, params: IngestFolderParams):
        super().__init__(db, params)
        self.store = store
        self.root = Path(params.path)
        if not self.root.is_dir():
            raise ValidationError(f"{params.path} is not a folder")
        self.project_id: int | None = None
        if params.project:
            with db.session() as session:
                project = session.scalars(select(Project).where(Project.name == params.project)).first()
                if project is None:
                    raise ValidationError(
                        f"no project named {params.project!r}; create it with `pixmo project create`"
                    )
                self.project_id = project.id
        self._files = sorted(walk_files(self.root))
        self._seen: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=params.workers)

    def items(self) -> Sequence[Path]:
        return self._files

    def total(self) -> int:
        return len(self._files)

    def process_batch(self, batch: Sequence[Path]) -> list[FileResult]:
        return list(self._pool.map(self._one, batch))

    def _one(self, path: Path) -> FileResult:
        # a name that is not UTF-8 is kept readable (and storable) with \x escapes
        ref = os.fsencode(path.relative_to(self.root)).decode("utf-8", "backslashreplace")
        try:
            st = path.stat()  # follows links: what would be read
            if stat.S_ISDIR(st.st_mode):
                os.listdir(path)  # a folder that could not be listed says why
            if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read, a device never end it
                return FileResult(ref, "rejected", "not_a_file", "a folder, FIFO, device or socket")
            size = st.st_size
            if size > self.params.max_bytes:
                return FileResult(ref, "rejected", "too_large", f"{size} bytes", size=size)
            data = path.read_bytes()
        except OSError as exc:
            return FileResult(ref, "rejected", "unreadable", str(exc))
        sha = hashlib.sha256(data).hexdigest()
        try:
            info = probe_image(data, self.params.max_pixels)
        except ImageRejected as exc:
            return FileResult(ref, "rejected", exc.reason, exc.detail, sha256=sha, size=len(data))
        key = content_key(sha, info.ext)
        if not self.store.exists(key):
            self.store.put_bytes(data, key=key, content_type=info.mime)
        return FileResult(ref, "stored", sha256=sha, info=info, size=len(data), key=key)

    def write(self, session: Session, results: list[FileResult]) -> None:
        good = [r for r in results if r.status == "stored"]
        shas = {r.sha256 for r in good}
        existing = set(session.scalars(select(Image.sha256).where(Image.sha256.in_(shas)))) if shas else set()
        rows = []
        for r in good:
            if r.sha256 in self._seen:
                r.status = "duplicate"
            elif r.sha256 in existing:
                r.status = "exists"
            else:
                rows.append(
                    {
                        "sha256": r.sha256,
                        "storage_key": r.key,
                        "width": r.info.width,
                        "height": r.info.height,
                        "mime": r.info.mime,
                        "bytes": r.size,
                        "source": self.params.source,
                        "source_url": None,
                    }
                )
            self._seen.add(r.sha256)
        # a concurrent run may have stored some meanwhile (PostgreSQL takes no lock up front): theirs, not ours.
        # In sha256 order: two runs inserting the same images in path order (two copies of a download,
        # named apart) each waited on a row the other held, and PostgreSQL killed one as a deadlock
        rows.sort(key=lambda row: row["sha256"])
        inserted = set(insert_ignore_returning(session, Image, rows, ["sha256"], "sha256"))
        for r in good:
            if r.status == "stored" and r.sha256 not in inserted:
                r.status = "exists"
        ids = {sha: i for sha, i in session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_(shas)))} if shas else {}
        if self.project_id is not None and ids:
            attach_images(session, session.get(Project, self.project_id), sorted(ids.values()))
        session.add_all(
            IngestItem(
                job_id=self.job_id,
                source_ref=r.ref,
                status=r.status,
                reason=(f"{r.reason}: {r.detail}" if r.detail else r.reason) if r.reason else None,
                sha256=r.sha256,
                image_id=ids.get(r.sha256) if r.status != "rejected" else None,
            )
            for r in results
        )
        for r in results:
            self.stats.record(r.status, r.reason, r.ref, r.size if r.status == "stored" else 0)

    def run(self, **kwargs) -> dict:  # noqa: ANN003
        try:
            return super().run(**kwargs)
        finally:
            self._pool.shutdown()


def ingest_folder(
    db: Database, store: BlobStore, path: str | Path, project: str | None = None, *, progress: bool = False, **params
) -> dict:
    """Ingest every image below ``path``; returns the run's stats (statuses, reasons, timing)."""
    stage = IngestFolder(db, store, IngestFolderParams(path=str(path), project=project, **params))
    stats = stage.run(progress=progress)
    stats["job_id"] = stage.job_id
    return stats
