"""Blob storage behind one interface: a local directory or an S3 bucket.

Keys are relative, slash-separated names (``images/cat.jpg``). When a put gets
no key, the blob is content-addressed: ``sha256/ab/cd/<sha256>.<ext>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import mimetypes
import os
import re
import stat
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import quote

from pixmo.errors import BlobNotFoundError, InvalidKeyError, StorageError

if TYPE_CHECKING:
    from pixmo.config import Settings

__all__ = [
    "local_path",
    "BlobStore",
    "LocalStore",
    "PutResult",
    "S3Store",
    "content_key",
    "open_store",
    "sign_url",
    "validate_key",
    "verify_signed_url",
]

CHUNK_SIZE = 1024 * 1024
_TAIL_READ = 64 * 1024
MAX_KEY_BYTES = 1024  # S3's limit on key length
DEFAULT_EXT = "bin"
# Temp files live next to their target; this reserved prefix keeps them out of listings.
TMP_PREFIX = ".pixmo-tmp-"
# Spooled uploads stay in memory up to this size, then move to a temp file.
SPOOL_MAX_MEMORY = 8 * 1024 * 1024

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_EXT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,15}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Source = str | os.PathLike | BinaryIO


@dataclass(frozen=True)
class PutResult:
    """Where a blob was stored, its SHA-256 (hex) and its size in bytes."""

    key: str
    sha256: str
    size: int


# --------------------------------------------------------------------------- keys


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe relative blob key, else raise InvalidKeyError."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"blob key must be a string, not {type(key).__name__}")
    if not key:
        raise InvalidKeyError("blob key is empty")
    if _CONTROL_RE.search(key):
        raise InvalidKeyError(f"blob key {key!r} contains a NUL or control character")
    if "\\" in key:
        raise InvalidKeyError(f"blob key {key!r} contains a backslash; use '/' to separate parts")
    if key.startswith("/"):
        raise InvalidKeyError(f"blob key {key!r} is absolute; keys are relative to the store")
    if key.endswith("/"):
        raise InvalidKeyError(f"blob key {key!r} ends with '/'")
    if "//" in key:
        raise InvalidKeyError(f"blob key {key!r} contains an empty part ('//')")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"blob key is longer than {MAX_KEY_BYTES} bytes")
    for part in key.split("/"):
        if part == "..":
            raise InvalidKeyError(f"blob key {key!r} contains a '..' part")
        if part == ".":
            raise InvalidKeyError(f"blob key {key!r} contains a '.' part")
        if part.startswith(TMP_PREFIX):
            raise InvalidKeyError(f"blob key {key!r} uses the reserved prefix {TMP_PREFIX!r}")
    return key


def _validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key-shaped string that may end with '/'."""
    if not isinstance(prefix, str):
        raise InvalidKeyError(f"key prefix must be a string, not {type(prefix).__name__}")
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def _normalize_ext(ext: str | None) -> str:
    if ext is None:
        return DEFAULT_EXT
    norm = ext.lower().lstrip(".")
    if not _EXT_RE.match(norm):
        raise InvalidKeyError(
            f"file extension {ext!r} is not allowed; use 1-16 letters, digits, '-' or '_'"
        )
    return norm


def content_key(sha256_hex: str, ext: str | None = DEFAULT_EXT) -> str:
    """The content-addressed key ``sha256/ab/cd/<sha>.<ext>`` for a SHA-256 hex digest."""
    if not isinstance(sha256_hex, str) or not _SHA256_RE.match(sha256_hex):
        raise InvalidKeyError(f"{sha256_hex!r} is not a lowercase SHA-256 hex digest")
    return f"sha256/{sha256_hex[:2]}/{sha256_hex[2:4]}/{sha256_hex}.{_normalize_ext(ext)}"


# --------------------------------------------------------------------------- signed URLs


def _signature(key: str, exp: int, secret: str) -> str:
    if not secret:
        raise StorageError("no secret configured to sign blob URLs")
    # NUL separators: neither a valid key nor a decimal expiry can contain one.
    message = f"pixmo-blob\x00{key}\x00{exp}".encode()
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign_url(key: str, exp: int, secret: str) -> str:
    """The hex HMAC-SHA256 signature that grants GET on ``key`` until unix time ``exp``."""
    return _signature(validate_key(key), int(exp), secret)


def verify_signed_url(
    key: str, exp: int | str, sig: str, secret: str, now: float | None = None
) -> bool:
    """True when ``sig`` is a valid signature for ``key`` and ``exp`` has not passed."""
    try:
        validate_key(key)
        exp_int = int(exp)
    except (InvalidKeyError, TypeError, ValueError):
        return False
    if not isinstance(sig, str) or not secret:
        return False
    if (time.time() if now is None else now) > exp_int:
        return False
    expected = _signature(key, exp_int, secret)
    return hmac.compare_digest(expected.encode("ascii"), sig.encode("utf-8", "surrogatepass"))


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _open_source(src: Source) -> Iterator[BinaryIO]:
    """Yield a binary stream for a path or pass an open stream through (not closing it)."""
    if isinstance(src, (str, os.PathLike)):
        try:
            f = open(src, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError as exc:
            raise StorageError(f"source file not found: {src}") from exc
        except OSError as exc:  # no permission, a folder
            raise StorageError(f"cannot read source file {src}: {exc.strerror or exc}") from exc
        with f:
            yield f
    else:
        yield src


def _read_chunk(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if data is None:  # a non-blocking stream with nothing ready yet: not its end (that is b"")
        raise StorageError("the stream has no data ready (a non-blocking stream); pass a blocking one")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StorageError("put_file needs a binary stream (open the file with 'rb')")
    return bytes(data)


class _HashingReader:
    """Non-seekable reader that hashes what passes through and fills every read.

    Reporting itself as non-seekable makes s3transfer read it once, in order,
    which keeps the hash right; filling reads keeps multipart parts >= 5 MiB.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        want = n if n is not None and n >= 0 else None
        got = 0
        while want is None or got < want:
            step = CHUNK_SIZE if want is None else min(CHUNK_SIZE, want - got)
            chunk = _read_chunk(self._stream, step)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        data = b"".join(parts)
        self.hash.update(data)
        self.size += len(data)
        return data


class _StreamingBodyIO(io.RawIOBase):
    """Raw-IO view of a botocore StreamingBody, so it can sit in an io.BufferedReader.

    A connection lost mid-stream is an OSError, as for any file: botocore raises its own errors
    (ResponseStreamingError, IncompleteReadError, ...), which readers of files do not expect.
    """

    def __init__(self, body) -> None:
        super().__init__()
        self._body = body

    def readable(self) -> bool:
        return True

    def _read(self, n: int | None = None) -> bytes:
        from botocore.exceptions import BotoCoreError

        try:
            return self._body.read(n) if n is not None else self._body.read()
        except BotoCoreError as exc:
            raise OSError(f"the S3 stream broke off: {exc}") from exc

    def readinto(self, b) -> int:
        data = self._read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def readall(self) -> bytes:
        return self._read()

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


# --------------------------------------------------------------------------- interface


class BlobStore(ABC):
    """Common interface of every blob store; keys are checked by :func:`validate_key`."""

    @abstractmethod
    def put_bytes(
        self,
        data: bytes,
        key: str | None = None,
        content_type: str | None = None,
        *,
        ext: str | None = None,
    ) -> PutResult:
        """Store ``data`` under ``key``, or content-addressed (with ``ext``) when key is None."""

    @abstractmethod
    def put_file(
        self,
        src: str | Path | BinaryIO,
        key: str | None = None,
        content_type: str | None = None,
        *,
        ext: str | None = None,
    ) -> PutResult:
        """Stream a file path or binary stream into the store, hashing as it copies."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A binary stream over the blob (use as a context manager); BlobNotFoundError if absent."""

    def get_bytes(self, key: str) -> bytes:
        """The whole blob in memory; BlobNotFoundError if absent."""
        with self.open(key) as f:
            return f.read()

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the blob; a missing key is not an error."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The blob's size in bytes; BlobNotFoundError if absent."""

    @abstractmethod
    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with ``prefix`` (plain string prefix, not only whole folders)."""

    @abstractmethod
    def url(self, key: str, expires: int = 3600) -> str:
        """A URL that lets a browser GET the blob for ``expires`` seconds."""

    @abstractmethod
    def describe(self) -> str:
        """A one-line human description of where blobs go."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


# --------------------------------------------------------------------------- local


class LocalStore(BlobStore):
    """Blobs as files under ``root``; URLs are HMAC-signed links served by the web app.

    ``secret`` may be a callable so that a missing secret only fails when a URL is
    signed, not when the store is merely used for reading and writing.
    """

    def __init__(self, root: str | Path, secret: str | Callable[[], str], public_url: str) -> None:
        self.root = Path(root).expanduser().resolve()
        self._secret = secret
        self.public_url = public_url.rstrip("/")

    @property
    def secret(self) -> str:
        return self._secret() if callable(self._secret) else self._secret

    def path_for(self, key: str) -> Path:
        """The file path of ``key``, guaranteed to lie inside the root."""
        validate_key(key)
        try:
            path = (self.root / key).resolve()
        except (OSError, RuntimeError) as exc:  # a link loop (RuntimeError before Python 3.13), no permission
            raise StorageError(f"cannot resolve blob {key}: {exc}") from exc
        if path == self.root or not path.is_relative_to(self.root):
            raise InvalidKeyError(f"blob key {key!r} resolves outside the store root")
        return path

    def _write(self, stream: BinaryIO, key: str | None, ext: str | None) -> PutResult:
        target = self.path_for(key) if key is not None else None
        norm_ext = _normalize_ext(ext) if key is None else None
        tmp_dir = target.parent if target is not None else self.root
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix=TMP_PREFIX, suffix=".part")
        except OSError as exc:
            raise StorageError(f"cannot write under {tmp_dir}: {exc}") from exc
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := _read_chunk(stream, CHUNK_SIZE):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            if target is None:
                key = content_key(sha, norm_ext)
                target = self.path_for(key)
                if target.is_file():
                    return PutResult(key, sha, size)
                target.parent.mkdir(parents=True, exist_ok=True)
            # mkstemp creates 0600; blobs should be readable like any other data file.
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
            fsync_dir(target.parent)
            return PutResult(key, sha, size)
        except OSError as exc:
            raise StorageError(f"cannot store blob {key or '(content-addressed)'}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, data, key=None, content_type=None, *, ext=None) -> PutResult:
        if key is None:
            sha = hashlib.sha256(data).hexdigest()
            ckey = content_key(sha, ext)
            if self.path_for(ckey).is_file():
                return PutResult(ckey, sha, len(data))
        return self._write(io.BytesIO(data), key, ext)

    def put_file(self, src, key=None, content_type=None, *, ext=None) -> PutResult:
        with _open_source(src) as stream:
            return self._write(stream, key, ext)

    def _open_fd(self, key: str) -> tuple[int, int]:
        """A descriptor open on the regular file of ``key`` (blocking mode), and the file's size."""
        # Opened by its lexical path (validate_key keeps it under the root), then checked by what
        # was really opened: cheaper than resolving the path first, and no window for a swapped link.
        # O_NONBLOCK: a link to a FIFO must not hang the reader before the checks refuse it.
        path = os.path.join(self.root, validate_key(key))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise BlobNotFoundError(key) from exc
        except OSError as exc:
            raise StorageError(f"cannot read blob {key}: {exc}") from exc
        try:
            if not _opened_path(fd, path).startswith(os.path.join(self.root, "")):
                raise InvalidKeyError(f"blob key {key!r} resolves outside the store root")
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise BlobNotFoundError(key)
            if not stat.S_ISREG(st.st_mode):
                raise StorageError(f"blob {key} is not a regular file")
            os.set_blocking(fd, True)
            return fd, st.st_size
        except BaseException:
            os.close(fd)
            raise

    def open(self, key: str) -> BinaryIO:
        fd, _ = self._open_fd(key)
        return os.fdopen(fd, "rb")

    def get_bytes(self, key: str) -> bytes:
        # straight from the descriptor, sized by fstat: a buffered file object per blob costs more
        # than the read itself for small images (the export reads every image this way)
        fd, size = self._open_fd(key)
        try:
            # one byte more than fstat said, then on to the end (a file that grew); later reads stay
            # small, as os.read allocates what it is asked for and a MiB per call costs more than the read
            parts, want, got = [], size + 1, 0
            while chunk := os.read(fd, want):  # one call reads at most ~2 GiB on Linux: a larger file takes more
                parts.append(chunk)
                got += len(chunk)
                want = max(_TAIL_READ, size + 1 - got)
            return parts[0] if len(parts) == 1 else b"".join(parts)
        except OSError as exc:
            raise StorageError(f"cannot read blob {key}: {exc}") from exc
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        path = self.path_for(key)
        try:
            return path.is_file()
        except OSError as exc:  # no permission to look (is_file answers False only for a missing file)
            raise StorageError(f"cannot check blob {key}: {exc.strerror or exc}") from exc

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        try:
            path.unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError):
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete blob {key}: {exc}") from exc

    def size(self, key: str) -> int:
        path = self.path_for(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise BlobNotFoundError(key) from exc
        except OSError as exc:
            raise StorageError(f"cannot read blob {key}: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise BlobNotFoundError(key)
        return st.st_size

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        _validate_prefix(prefix)
        # Start walking at the deepest folder the prefix names, then filter by string.
        start = self.root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.root
        if not start.is_dir() or not start.resolve().is_relative_to(self.root):
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in sorted(filenames):
                if name.startswith(TMP_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix) and not os.path.islink(os.path.join(dirpath, name)):
                    yield key

    def url(self, key: str, expires: int = 3600) -> str:
        validate_key(key)
        exp = int(time.time()) + int(expires)
        sig = sign_url(key, exp, self.secret)
        return f"{self.public_url}/blobs/{quote(key, safe='/')}?exp={exp}&sig={sig}"

    def describe(self) -> str:
        return f"local directory {self.root}"


def _opened_path(fd: int, path: str) -> str:
    """The real path of the file open as ``fd`` (opened by ``path``)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")  # Linux: the file itself, one system call
    except OSError:
        return os.path.realpath(path)


def fsync_dir(path: Path) -> None:
    """Make a rename into ``path`` durable (POSIX; directories cannot be opened on Windows)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- S3


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _is_not_found(exc: Exception) -> bool:
    return _error_code(exc) in {"404", "NoSuchKey", "NotFound"}


CONNECT_TIMEOUT_S = 10


class S3Store(BlobStore):
    """Blobs as objects in an S3 (or S3-compatible) bucket, under an optional prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        public_endpoint_url: str | None = None,
        *,
        client=None,
    ) -> None:
        if not bucket:
            raise StorageError("S3 store needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            validate_key(self.prefix)
        self.endpoint_url = endpoint_url or None
        # where browsers reach the store when that is not where this process does (docker compose:
        # http://minio:9000 inside, http://localhost:9000 outside); links are signed for that host
        self.public_endpoint_url = public_endpoint_url or None
        self.region = region
        self.client = client if client is not None else self._make_client()
        self._public_client = None

    def __reduce__(self):
        # boto3 clients do not pickle: other processes (export workers, Ray actors) rebuild one
        return (S3Store, (self.bucket, self.prefix, self.endpoint_url, self.region, self.public_endpoint_url))

    def _make_client(self, endpoint_url: str | None = None):
        import boto3
        from botocore.config import Config

        # connect_timeout: botocore waits 60 s per attempt for an endpoint that never answers; a
        # reachable store connects in milliseconds, so ten seconds still allows a slow network
        options: dict = {"signature_version": "s3v4", "retries": {"max_attempts": 5, "mode": "standard"},
                         "connect_timeout": CONNECT_TIMEOUT_S}
        endpoint_url = endpoint_url or self.endpoint_url
        if endpoint_url:
            # Custom endpoints (MinIO, moto) rarely have wildcard DNS for virtual hosts,
            # and some reject the newer default request checksums.
            options["s3"] = {"addressing_style": "path"}
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        return boto3.client("s3", endpoint_url=endpoint_url, region_name=self.region, config=Config(**options))

    def _full(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            if key is not None and _is_not_found(exc):
                raise BlobNotFoundError(key) from exc
            where = f"s3://{self.bucket}/{self._full(key) if key else self.prefix}"
            raise StorageError(f"S3 {action} failed for {where}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 {action} failed ({self.describe()}): {exc}") from exc

    def _extra_args(self, key: str, content_type: str | None, sha: str | None) -> dict:
        ctype = content_type or mimetypes.guess_type(key)[0] or "application/octet-stream"
        extra: dict = {"ContentType": ctype}
        if sha:
            extra["Metadata"] = {"sha256": sha}
        return extra

    def _upload(self, fileobj, key: str, content_type: str | None, sha: str | None) -> None:
        with self._errors("upload", None):
            self.client.upload_fileobj(
                fileobj, self.bucket, self._full(key), ExtraArgs=self._extra_args(key, content_type, sha)
            )

    def put_bytes(self, data, key=None, content_type=None, *, ext=None) -> PutResult:
        sha = hashlib.sha256(data).hexdigest()
        if key is None:
            key = content_key(sha, ext)
            if self.exists(key):
                return PutResult(key, sha, len(data))
        full = self._full(key)
        with self._errors("put", None):
            self.client.put_object(
                Bucket=self.bucket, Key=full, Body=data, **self._extra_args(key, content_type, sha)
            )
        return PutResult(key, sha, len(data))

    def put_file(self, src, key=None, content_type=None, *, ext=None) -> PutResult:
        if key is not None:
            self._full(key)  # validate before reading anything
        else:
            norm_ext = _normalize_ext(ext)
        if isinstance(src, (str, os.PathLike)):
            # A path can be read twice: hash first, then let s3transfer upload parts in parallel.
            digest, size = hashlib.sha256(), 0
            with _open_source(src) as f:
                while chunk := _read_chunk(f, CHUNK_SIZE):
                    digest.update(chunk)
                    size += len(chunk)
            sha = digest.hexdigest()
            if key is None:
                key = content_key(sha, norm_ext)
                if self.exists(key):
                    return PutResult(key, sha, size)
            with _open_source(src) as f:
                self._upload(f, key, content_type, sha)
            return PutResult(key, sha, size)
        if key is not None:
            reader = _HashingReader(src)
            self._upload(reader, key, content_type, None)
            return PutResult(key, reader.hash.hexdigest(), reader.size)
        # Unknown stream, unknown key: the key depends on the hash, so spool it first.
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_MEMORY) as spool:
            digest, size = hashlib.sha256(), 0
            while chunk := _read_chunk(src, CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
                spool.write(chunk)
            sha = digest.hexdigest()
            key = content_key(sha, norm_ext)
            if not self.exists(key):
                spool.seek(0)
                self._upload(spool, key, content_type, sha)
        return PutResult(key, sha, size)

    def open(self, key: str) -> BinaryIO:
        full = self._full(key)
        with self._errors("get", key):
            response = self.client.get_object(Bucket=self.bucket, Key=full)
        return io.BufferedReader(_StreamingBodyIO(response["Body"]), buffer_size=CHUNK_SIZE)

    def get_bytes(self, key: str) -> bytes:
        full = self._full(key)
        with self._errors("get", key):
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            with contextlib.closing(response["Body"]) as body:
                return body.read()

    def _head(self, key: str) -> dict:
        full = self._full(key)
        with self._errors("head", key):
            return self.client.head_object(Bucket=self.bucket, Key=full)

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except BlobNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._errors("delete", None):
            self.client.delete_object(Bucket=self.bucket, Key=full)

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        _validate_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors("list", None):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for obj in page.get("Contents", ()):
                    yield obj["Key"][len(base):]

    def url(self, key: str, expires: int = 3600) -> str:
        full = self._full(key)
        client = self.client
        if self.public_endpoint_url:  # presigning is local: no request goes to that endpoint
            if self._public_client is None:
                self._public_client = self._make_client(self.public_endpoint_url)
            client = self._public_client
        with self._errors("presign", None):
            return client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=int(expires)
            )

    def bucket_exists(self) -> bool:
        """Whether the bucket exists (a bucket without access is a StorageError, not False)."""
        from botocore.exceptions import ClientError

        with self._errors("head bucket"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return True
            except ClientError as exc:
                if _error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                    raise
        return False

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""
        from botocore.exceptions import ClientError

        if self.bucket_exists():
            return
        kwargs: dict = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        with self._errors("create bucket"):
            try:
                self.client.create_bucket(**kwargs)
            except ClientError as exc:
                # Another process may have created it between the two calls.
                if _error_code(exc) != "BucketAlreadyOwnedByYou":
                    raise

    def describe(self) -> str:
        where = self.endpoint_url or "AWS"
        return f"s3://{self.bucket}/{self.prefix} at {where} ({self.region})"


# --------------------------------------------------------------------------- factory


def open_store(url: str | None = None, settings: Settings | None = None) -> BlobStore:
    """The store for ``url`` (default: the settings' storage URL).

    ``file://PATH`` (also ``file:/PATH`` and ``file://localhost/PATH``) or a bare path gives a
    LocalStore (relative paths are taken from the working directory); ``s3://bucket/prefix`` gives
    an S3Store.
    """
    if settings is None:
        from pixmo.config import get_settings

        settings = get_settings()
    if url is None:
        url = settings.resolved_storage_url
    if not url or not url.strip():
        raise StorageError("storage URL is empty; use file://PATH or s3://bucket/prefix")
    path = local_path(url)
    if path is not None:
        return _local_store(path, settings)
    scheme, _, rest = url.partition("://")
    if scheme.lower() == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StorageError(f"storage URL {url!r} has no bucket name")
        try:
            return S3Store(bucket, prefix, settings.s3_endpoint_url, settings.s3_region, settings.s3_public_endpoint_url)
        except InvalidKeyError as exc:
            raise StorageError(f"storage URL {url!r} has an invalid prefix: {exc}") from exc
    raise StorageError(f"unsupported storage URL {url!r}; use file://PATH or s3://bucket/prefix")


def local_path(url: str) -> str | None:
    """The path of a local ``url``: ``file://PATH``, ``file:/PATH``, ``file://localhost/PATH`` or a
    bare path; None for another scheme (``s3://``)."""
    scheme, sep, rest = url.partition("://")
    if not sep and url[:5].lower() == "file:":  # file:/srv/blobs (a folder named "file:" was made)
        scheme, sep, rest = "file", "://", url[5:]
    if not sep:
        return url
    if scheme.lower() != "file":
        return None
    if rest.lower().startswith("localhost/"):  # file://localhost/srv/blobs is /srv/blobs
        rest = rest[len("localhost"):]
    if not rest:
        raise StorageError(f"URL {url!r} has no path")
    return rest


def _local_store(path: str, settings: Settings) -> LocalStore:
    return LocalStore(Path(path), settings.require_secret, settings.public_url)
