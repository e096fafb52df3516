"""Where an export goes: a local folder or a blob store (``s3://bucket/prefix``).

Every file is written under a temporary name and appears under its final name only when it is
complete: in a folder by an atomic rename, in S3 by uploading a finished local temp file (an object
becomes visible only when its upload completes). Temporary names start with the blob store's
reserved prefix and end in ``.part``, so nothing half-written ever looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from pixmo.db.session import Database, NamedLock
from pixmo.errors import StorageError
from pixmo.storage import TMP_PREFIX, BlobStore, LocalStore, S3Store, fsync_dir, local_path, open_store


class ExportTarget(ABC):
    """A flat namespace of files (shards, parquet, manifest) with atomic writes; picklable, so worker
    processes get their own (S3 stores pickle by recipe)."""

    url: str

    @abstractmethod
    def names(self) -> list[str]:
        """Every complete file, as a name relative to the target (``train-000000.tar``)."""

    @abstractmethod
    def temp_names(self) -> list[str]:
        """Leftover temporary files (from a run that was killed)."""

    @abstractmethod
    def _staging_folder(self, name: str) -> Path | str | None:
        """Where the temporary file of ``name`` is made (None: the system's temporary folder)."""

    def _private_folder(self, name: str) -> str | None:
        """Where a private temporary file of ``name`` is made when `_staging_folder` is None
        (None: the system's temporary folder)."""
        return None

    def clear_staging(self, part: str | None = None) -> None:
        """Remove the temporary files a killed run left outside the target (of one HF subset with
        ``part``, else of the shards). Only while holding the target (`held_for_export`)."""

    @abstractmethod
    def publish(self, path: str, name: str) -> None:
        """The finished temporary file at ``path`` (from `stage`) appears as ``name``, moved or uploaded."""

    def stage(self, name: str) -> tuple[BinaryIO, str]:
        """A new temporary file for ``name`` on this machine, open for writing, and its path.

        Nothing appears under ``name`` until `publish`; the caller removes the file if it does not publish it.
        """
        folder = self._staging_folder(name)
        with write_errors(name, folder or f"a local temporary file ({tempfile.gettempdir()})"):
            if folder is None:  # private: it only waits to be uploaded
                fd, path = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{Path(name).name}.", suffix=".part",
                                            dir=self._private_folder(name))
                return os.fdopen(fd, "wb"), path
            Path(folder).mkdir(parents=True, exist_ok=True)
            # not mkstemp, whose files are private (0600): a published file gets the umask's mode
            path = os.path.join(folder, f"{TMP_PREFIX}{Path(name).name}.{uuid.uuid4().hex[:12]}.part")
            return open(path, "xb"), path  # noqa: SIM115 - the caller closes it

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[BinaryIO]:
        """A file to write ``name`` into; it appears under ``name`` only when the block succeeds."""
        # only the target's own failures (no permission, disk full, a file where a folder should be)
        # become StorageErrors: an OSError from the caller's block (an image that does not decode,
        # say) is the caller's to name; writes through HashingWriter name their file themselves
        f, path = self.stage(name)
        try:
            with f:
                yield f
                with write_errors(name, self.url):
                    f.flush()  # what is still buffered: a full disk shows here, not at close
            self.publish(path, name)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # gone already once published

    @abstractmethod
    def open(self, name: str) -> BinaryIO:
        """Read a complete file."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove a file (complete or temporary); a missing one is not an error."""

    @abstractmethod
    def location(self, name: str) -> str:
        """A path or URL that webdataset and other readers can open."""


    def put_bytes(self, name: str, data: bytes) -> None:
        with self.writer(name) as f:
            with write_errors(name, self.url):
                f.write(data)

    def get_bytes(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def exists(self, name: str) -> bool:
        return name in self.names()

    def absent_because(self) -> str | None:
        """Why nothing can be there at all (no such folder or bucket), else None."""
        return None

    @contextlib.contextmanager
    def writing(self, part: str | None = None) -> Iterator[None]:
        """Hold the target while an export writes to it, so that a second export into the same place
        fails at once (StorageError) instead of deleting the first one's files as leftovers.

        ``part`` (a subfolder, as an HF subset) is held alone while the rest is shared with other
        parts; without it the whole target is held. Only folders can be held: a blob store is not.
        """
        yield


class ExportHold:
    """An export's hold on its place (`held_for_export`); ``check()`` before a destructive step."""

    def __init__(self, where: str, locks: list[NamedLock]) -> None:
        self.where, self.locks = where, locks

    def check(self) -> None:
        """StorageError when a database lock of the hold has lapsed (its connection was cut): another
        export may be writing there now, so this one stops before it deletes or publishes anything."""
        if not all(lock.still_held() for lock in self.locks):
            raise StorageError(f"the hold on {self.where} was lost (the database connection was cut): another export "
                               "may be writing there now; run this one again")


@contextlib.contextmanager
def held_for_export(db: Database, target: ExportTarget, part: str | None = None) -> Iterator[ExportHold]:
    """`ExportTarget.writing`; for a blob store (S3), which has no lock of its own, the same hold as
    named locks in ``db``, so that two exports of one deployment into the same bucket and prefix
    refuse each other there too (exports from other databases into one prefix are not seen). A
    folder is held by flock alone: two machines sharing a database each have their own ``/data/out``."""
    where = target.url if part is None else f"{target.url.rstrip('/')}/{part}"
    with contextlib.ExitStack() as held:
        held.enter_context(target.writing(part))
        locks: list[NamedLock] = []
        if isinstance(target, StoreTarget):
            # the place itself, however the URL was spelled; hashed, as a URL may be longer than a lock file's name
            place = "|".join(map(str, _store_place(target.store)))
            key = "export-" + hashlib.sha256(place.encode()).hexdigest()[:32]
            names = [(key, part is not None)]
            if part is not None:
                names.append((f"{key}-{hashlib.sha256(part.encode()).hexdigest()[:16]}", False))
            for name, shared in names:
                lock = held.enter_context(db.try_lock(name, shared=shared))
                if not lock:
                    raise StorageError(f"another export is writing to {where} now; wait for it to finish or export "
                                       "to another place")
                locks.append(lock)
        yield ExportHold(where, locks)


@contextlib.contextmanager
def _folder_lock(folder: Path, *, shared: bool) -> Iterator[None]:
    """An advisory lock (flock) on ``folder`` itself, held until the block ends. A missing folder is
    made; the levels this call made are removed again (while empty) when the block fails once the
    lock was taken, so a failed export leaves nothing. A refused one removes nothing: the folder may
    be the one the export holding the lock is about to write into."""
    missing, parent = [], folder
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    made: list[Path] = []
    try:
        for level in reversed(missing):  # shallowest first: only what this call itself creates is its own
            try:
                level.mkdir()
                made.append(level)
            except FileExistsError:
                pass  # made meanwhile by another process (or a file: refused just below)
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the folder {folder}: {exc.strerror or exc}") from exc
    with _flock(folder, shared):
        try:
            yield
        except BaseException:
            for path in reversed(made):  # deepest first
                try:
                    path.rmdir()
                except OSError:
                    break  # not empty: kept
            raise


@contextlib.contextmanager
def _flock(folder: Path, shared: bool) -> Iterator[None]:
    if fcntl is None:  # no flock (Windows): nothing is held
        yield
        return
    busy = StorageError(f"another export is writing to {folder} now; wait for it to finish or export to another folder")
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        except OSError:
            pass  # a file system without flock: the export goes on unheld, as before
        # the folder opened is still the one at that path (a failed export may have removed it and
        # another made it anew): else the lock would hold nothing
        held, there = os.fstat(fd), _stat_or_none(folder)
        if there is None or (held.st_dev, held.st_ino) != (there.st_dev, there.st_ino):
            raise busy
        yield
    finally:
        os.close(fd)  # releases the lock


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


@contextlib.contextmanager
def write_errors(name: str, where: object) -> Iterator[None]:
    """An OSError in the block (no permission, disk full) becomes a StorageError naming ``name`` and ``where``."""
    try:
        yield
    except OSError as exc:
        raise StorageError(f"cannot write {name} in {where}: {exc.strerror or exc}") from exc


class HashingWriter:
    """Write-through wrapper of a file being written: its sha256 and size come out of the same pass.
    A failing write (disk full) is a StorageError naming ``name``."""

    def __init__(self, raw: BinaryIO, name: str, where: object) -> None:
        self.raw = raw
        self.name, self.where = name, where
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        with write_errors(self.name, self.where):
            return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()

    @property
    def closed(self) -> bool:  # pyarrow's writers ask
        return self.raw.closed


class LocalTarget(ExportTarget):
    """A folder on this machine; files are renamed into place when complete."""

    def __init__(self, root: str | Path) -> None:
        if not str(root).strip():
            raise StorageError("no export location given (an empty path)")
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"{self.root} exists and is not a folder")

    def _path(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise StorageError(f"{name!r} is not a file name inside {self.root}")
        return path

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root)
            for f in sorted(filenames):
                if not f.startswith(TMP_PREFIX):
                    out.append((rel / f).as_posix())
        return out

    def temp_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            (Path(d).relative_to(self.root) / f).as_posix()
            for d, _, files in os.walk(self.root)
            for f in files
            if f.startswith(TMP_PREFIX)
        )

    def _staging_folder(self, name: str) -> Path:
        return self._path(name).parent  # the same file system: publishing is a rename

    def publish(self, path: str, name: str) -> None:
        target = self._path(name)
        with write_errors(name, self.root):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(path, target)
            fsync_dir(target.parent)

    def open(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")  # noqa: SIM115 - caller closes
        except FileNotFoundError as exc:
            raise StorageError(f"{name} is missing from {self.root}") from exc

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot remove {name} from {self.root}: {exc.strerror or exc}") from exc

    def location(self, name: str) -> str:
        return str(self._path(name))

    def absent_because(self) -> str | None:
        return None if self.root.is_dir() else "no such folder"

    @contextlib.contextmanager
    def writing(self, part: str | None = None) -> Iterator[None]:
        with contextlib.ExitStack() as held:
            held.enter_context(_folder_lock(self.root, shared=part is not None))
            if part is not None:
                held.enter_context(_folder_lock(self._path(part), shared=False))
            yield


class StoreTarget(ExportTarget):
    """A blob store (S3 or a LocalStore); files are uploaded from a finished local temp file."""

    def __init__(self, store: BlobStore, url: str | None = None, tmp_dir: str | None = None) -> None:
        self.store = store
        self.url = url or _store_url(store)
        self.tmp_dir = tmp_dir

    def names(self) -> list[str]:
        return sorted(self.store.iter_keys(""))

    def temp_names(self) -> list[str]:
        return []  # temp files live on the writing machine, never in the store (see clear_staging)

    def _staging_folder(self, name: str) -> str | None:
        return self.tmp_dir  # temporary files live on the writing machine, never in the store

    def _staging_root(self) -> Path:
        # one folder per user and place on this machine, so that a killed run's files (up to
        # --maxsize each) are found and removed by the next run into the same place
        place = hashlib.sha256(self.url.encode("utf-8")).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"pixmo-staging-{os.getuid() if hasattr(os, 'getuid') else 0}" / place

    def _private_folder(self, name: str) -> str:
        root = self._staging_root()
        _own_private_dir(root.parent)
        folder = root / (name.split("/", 1)[0] if "/" in name else "_")
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return str(folder)

    def clear_staging(self, part: str | None = None) -> None:
        if self.tmp_dir is not None:
            return  # a folder the caller chose: not ours to clear
        folder = self._staging_root() / (part or "_")
        for leftover in folder.glob(f"{TMP_PREFIX}*.part") if folder.is_dir() else ():
            with contextlib.suppress(OSError):
                leftover.unlink()

    def publish(self, path: str, name: str) -> None:
        self.store.put_file(path, key=name, content_type=_content_type(name))
        Path(path).unlink(missing_ok=True)

    def open(self, name: str) -> BinaryIO:
        return self.store.open(name)

    def exists(self, name: str) -> bool:
        return self.store.exists(name)

    def delete(self, name: str) -> None:
        self.store.delete(name)

    def absent_because(self) -> str | None:
        if isinstance(self.store, S3Store) and not self.store.bucket_exists():
            return f"bucket {self.store.bucket!r} does not exist"
        return None

    def location(self, name: str) -> str:
        if isinstance(self.store, S3Store):
            prefix = f"{self.store.prefix}/" if self.store.prefix else ""
            return f"s3://{self.store.bucket}/{prefix}{name}"
        if isinstance(self.store, LocalStore):
            return str(self.store.path_for(name))
        return f"{self.url.rstrip('/')}/{name}"


def _content_type(name: str) -> str:
    if name.endswith(".tar"):
        return "application/x-tar"
    if name.endswith(".json"):
        return "application/json"
    if name.endswith(".parquet"):
        return "application/vnd.apache.parquet"
    return "application/octet-stream"


def _store_place(store: BlobStore) -> tuple:
    """Where a store's blobs are, the same however its URL was written. Not the S3 endpoint: one
    server has many spellings (127.0.0.1 and localhost, compose's minio:9000 and the host's
    localhost:9000), and two exports into one prefix through two of them each took their own hold;
    a bucket and prefix of the same name at another service refused as well is harmless."""
    if isinstance(store, S3Store):
        return ("s3", store.bucket, store.prefix)
    if isinstance(store, LocalStore):
        return ("file", str(Path(store.root).resolve()))
    return ("store", store.describe())


def _store_url(store: BlobStore) -> str:
    if isinstance(store, S3Store):
        return f"s3://{store.bucket}/{store.prefix}".rstrip("/")
    if isinstance(store, LocalStore):
        return str(store.root)
    return store.describe()



def check_apart(target: ExportTarget, store: BlobStore) -> None:
    """Refuse an export folder inside the blob store's folder (its files would become blob keys) or
    around it (cleaning up the export would touch the store's own temporary files)."""
    if isinstance(target, LocalTarget) and isinstance(store, LocalStore):
        root = store.root  # resolved by LocalStore
        if target.root == root or target.root.is_relative_to(root):
            raise StorageError(f"{target.root} is inside the blob store ({root}); export to a folder outside it")
        if root.is_relative_to(target.root):
            raise StorageError(f"{target.root} holds the blob store ({root}); export to a folder outside it")
    if isinstance(target, StoreTarget) and isinstance(target.store, S3Store) and isinstance(store, S3Store):
        out, blobs = target.store, store
        if out.bucket == blobs.bucket and _overlap(out.prefix, blobs.prefix):  # endpoints: see _store_place
            raise StorageError(f"{target.url} overlaps the blob store ({_store_url(store)}); "
                               "export to another bucket or prefix")


def _overlap(a: str, b: str) -> bool:
    """Whether two key prefixes (no trailing '/'; '' is the whole bucket) share any key."""
    return not a or not b or a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _own_private_dir(path: Path) -> None:
    """Make ``path`` (in the shared temporary folder) or check it: a folder of this user's, closed
    to others, not a link. Its name is predictable: made first by another user, they could swap a
    staged shard or manifest before it was uploaded."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    uid = os.getuid() if hasattr(os, "getuid") else st.st_uid
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        raise StorageError(f"{path} is not a private folder of this user (made by someone else, or a link): "
                           "remove it, or set TMPDIR to a folder of your own")
    if st.st_mode & 0o077:  # this user's, opened up (earlier versions made it 0755): closed again
        os.chmod(path, 0o700)


def open_target(out: str | Path | BlobStore | ExportTarget) -> ExportTarget:
    """The target for ``out``: a folder path, ``file://PATH``, ``s3://bucket/prefix`` or a BlobStore."""
    if isinstance(out, ExportTarget):
        return out
    if isinstance(out, BlobStore):
        return StoreTarget(out)
    text = str(out)
    if text.startswith("s3://"):
        if not text[5:].strip("/"):
            raise StorageError(f"{text!r} has no bucket name")
        return StoreTarget(open_store(text.rstrip("/")), text.rstrip("/"))
    path = local_path(text)  # file://localhost/srv/out and file:/srv/out were folders below the working one
    if path is None:
        raise StorageError(f"unsupported export location {text!r}; use a folder or s3://bucket/prefix")
    return LocalTarget(path)
