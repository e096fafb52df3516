"""Blob storage: the same behaviour from the local directory store and from S3 (moto server)."""

from __future__ import annotations

import hashlib
import io
import os
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from pixmo.config import Settings
from pixmo.errors import BlobNotFoundError, InvalidKeyError, StorageError
from pixmo.storage import (
    TMP_PREFIX,
    BlobStore,
    LocalStore,
    PutResult,
    S3Store,
    content_key,
    open_store,
    sign_url,
    validate_key,
    verify_signed_url,
)
from tests.s3server import make_s3_store, s3_server  # noqa: F401

SECRET = "test-secret-0123456789abcdef"
PUBLIC_URL = "http://app.example:8000"
BIG = 12 * 1024 * 1024  # above s3transfer's 8 MiB multipart threshold

BAD_KEYS = ["../x", "a/../../x", "/etc/passwd", "a\x00b", "a\\b", ""]
MORE_BAD_KEYS = ["a//b", "a/", "./a", "a/./b", "..", "a/..", "a\tb", "a\x7fb", "a\nb", TMP_PREFIX + "x"]


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> BlobStore:
    if request.param == "local":
        return LocalStore(tmp_path / "root", SECRET, PUBLIC_URL)
    return make_s3_store(request.getfixturevalue("s3_server"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def all_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


class ChunkGuard(io.RawIOBase):
    """A stream that refuses unbounded reads, so a put that slurps the whole file fails."""

    def __init__(self, data: bytes, limit: int = 16 * 1024 * 1024, fail_after: int | None = None):
        self._buf = io.BytesIO(data)
        self._limit = limit
        self._fail_after = fail_after
        self.max_read = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        assert n is not None and 0 <= n <= self._limit, f"unbounded read({n})"
        self.max_read = max(self.max_read, n)
        if self._fail_after is not None and self._buf.tell() >= self._fail_after:
            raise RuntimeError("boom: source failed mid-stream")
        return self._buf.read(n)


# --------------------------------------------------------------------------- key rules


@pytest.mark.parametrize("key", ["a", "a/b/c.jpg", "images/cat 1.png", "ünïcode/ß.txt", ".hidden", "a..b/c"])
def test_validate_key_accepts(key):
    assert validate_key(key) == key


@pytest.mark.parametrize("key", BAD_KEYS + MORE_BAD_KEYS)
def test_validate_key_refuses(key):
    with pytest.raises(InvalidKeyError) as err:
        validate_key(key)
    assert isinstance(err.value, ValueError) and str(err.value)


def test_validate_key_refuses_non_str_and_too_long():
    with pytest.raises(InvalidKeyError):
        validate_key(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError, match="longer"):
        validate_key("a" * 1025)


def test_content_key_shape():
    digest = sha(b"hello")
    assert content_key(digest, "png") == f"sha256/{digest[:2]}/{digest[2:4]}/{digest}.png"
    assert content_key(digest, None).endswith(".bin")
    assert content_key(digest, ".JPG").endswith(".jpg")
    for bad_ext in ["", "a/b", "..", "x" * 17]:
        with pytest.raises(InvalidKeyError):
            content_key(digest, bad_ext)
    with pytest.raises(InvalidKeyError):
        content_key("ABC", "bin")


# --------------------------------------------------------------------------- both stores


def test_put_get_round_trip(store):
    result = store.put_bytes(b"hello world", "docs/hello.txt", "text/plain")
    assert result == PutResult("docs/hello.txt", sha(b"hello world"), 11)
    assert store.get_bytes("docs/hello.txt") == b"hello world"
    with store.open("docs/hello.txt") as f:
        assert f.read() == b"hello world"
    # An explicit key is overwritten by the next put.
    store.put_bytes(b"second", "docs/hello.txt")
    assert store.get_bytes("docs/hello.txt") == b"second"
    assert store.put_bytes(b"", "empty").size == 0
    assert store.get_bytes("empty") == b""


@pytest.mark.parametrize("size", [1, 65_535, 65_536, 65_537, 3 * 1024 * 1024 + 7])
def test_local_get_bytes_reads_whole_file(tmp_path, size):
    store = LocalStore(tmp_path / "blobs", secret="s", public_url="http://x")
    data = os.urandom(size)
    store.put_bytes(data, "k/blob.bin")
    assert store.get_bytes("k/blob.bin") == data


def test_local_get_bytes_reads_past_a_stale_size(tmp_path, monkeypatch):
    """A file that grew between fstat and the read is read to its end, not cut at the old size."""
    store = LocalStore(tmp_path / "blobs", secret="s", public_url="http://x")
    data = os.urandom(200_000)
    store.put_bytes(data, "k/grown.bin")
    real_fstat = os.fstat

    def stale_fstat(fd):
        st = real_fstat(fd)
        fields = list(st)
        fields[6] = 10  # st_size as it was before the file grew
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", stale_fstat)
    assert store.get_bytes("k/grown.bin") == data


def test_put_file_from_path_and_stream(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"from a path")
    assert store.put_file(src, "p/path.bin") == PutResult("p/path.bin", sha(b"from a path"), 11)
    assert store.put_file(str(src), "p/str.bin").size == 11
    assert store.put_file(io.BytesIO(b"from a stream"), "p/stream.bin").sha256 == sha(b"from a stream")
    assert store.get_bytes("p/path.bin") == b"from a path"
    assert store.get_bytes("p/stream.bin") == b"from a stream"


def test_put_file_text_stream_refused(store):
    with pytest.raises(StorageError, match="binary"):
        store.put_file(io.StringIO("text"), "t.txt")


def test_missing_source_file(store, tmp_path):
    with pytest.raises(StorageError, match="not found"):
        store.put_file(tmp_path / "nope.bin", "x")


def test_content_addressing_and_dedupe(store, tmp_path):
    data = b"same bytes every time"
    first = store.put_bytes(data)
    assert first.key == content_key(sha(data), "bin")
    assert first.sha256 == sha(data) and first.size == len(data)
    assert store.put_bytes(data) == first
    assert store.put_file(io.BytesIO(data)) == first
    src = tmp_path / "same.bin"
    src.write_bytes(data)
    assert store.put_file(src) == first
    assert list(store.iter_keys()) == [first.key]

    png = store.put_bytes(data, ext="png")
    assert png.key == content_key(sha(data), "png")
    assert store.put_file(io.BytesIO(data), ext=".PNG").key == png.key
    assert sorted(store.iter_keys()) == sorted([first.key, png.key])
    assert store.get_bytes(png.key) == data


def test_dedupe_does_not_rewrite_local(tmp_path):
    store = LocalStore(tmp_path / "root", SECRET, PUBLIC_URL)
    data = b"x" * 1000
    key = store.put_bytes(data).key
    before = store.path_for(key).stat()
    time.sleep(0.01)
    store.put_file(io.BytesIO(data))
    store.put_bytes(data)
    after = store.path_for(key).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_big_file_streams_in_chunks(store, tmp_path):
    data = os.urandom(BIG)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    by_path = store.put_file(src, "big/path.bin")
    assert by_path == PutResult("big/path.bin", sha(data), BIG)

    guard = ChunkGuard(data)
    by_stream = store.put_file(guard, "big/stream.bin")
    assert by_stream.sha256 == sha(data) and by_stream.size == BIG
    assert 0 < guard.max_read <= 16 * 1024 * 1024

    guard = ChunkGuard(data)
    addressed = store.put_file(guard, ext="dat")
    assert addressed.key == content_key(sha(data), "dat")

    for key in ["big/path.bin", "big/stream.bin", addressed.key]:
        digest, total = hashlib.sha256(), 0
        with store.open(key) as f:
            while chunk := f.read(1024 * 1024):
                assert len(chunk) <= 1024 * 1024
                digest.update(chunk)
                total += len(chunk)
        assert (total, digest.hexdigest()) == (BIG, sha(data))


def test_open_partial_reads(store):
    store.put_bytes(b"0123456789", "digits")
    with store.open("digits") as f:
        assert f.read(3) == b"012"
        assert f.read(4) == b"3456"
        assert f.read() == b"789"
        assert f.read(1) == b""
    assert f.closed


def test_exists_delete(store):
    assert not store.exists("a/b.txt")
    store.put_bytes(b"x", "a/b.txt")
    assert store.exists("a/b.txt")
    assert not store.exists("a")  # a folder is not a blob
    store.delete("a/b.txt")
    assert not store.exists("a/b.txt")
    store.delete("a/b.txt")  # missing is fine
    store.delete("never/there")


def test_missing_blob_errors(store):
    for call in (store.get_bytes, store.open, store.size):
        with pytest.raises(BlobNotFoundError):
            call("no/such/key")
    with pytest.raises(KeyError):
        store.get_bytes("no/such/key")


def test_size(store):
    store.put_bytes(b"x" * 12345, "sized")
    assert store.size("sized") == 12345
    assert store.size(store.put_bytes(b"").key) == 0


def test_iter_keys_prefix(store):
    for key in ["a/1", "a/2", "ab/3", "b/4", "top"]:
        store.put_bytes(key.encode(), key)
    assert sorted(store.iter_keys()) == ["a/1", "a/2", "ab/3", "b/4", "top"]
    assert sorted(store.iter_keys("a/")) == ["a/1", "a/2"]
    assert sorted(store.iter_keys("a")) == ["a/1", "a/2", "ab/3"]
    assert sorted(store.iter_keys("b/4")) == ["b/4"]
    assert list(store.iter_keys("zzz/")) == []
    assert list(store.iter_keys("zzz")) == []
    with pytest.raises(InvalidKeyError):
        list(store.iter_keys("../"))


def test_url(store):
    data = b"fetch me"
    store.put_bytes(data, "dir/file name.txt")
    url = store.url("dir/file name.txt", expires=600)
    if isinstance(store, S3Store):
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.read() == data
        return
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_URL
    assert parts.path.startswith("/blobs/")
    key = unquote(parts.path[len("/blobs/"):])
    assert key == "dir/file name.txt"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    exp, sig = int(query["exp"]), query["sig"]
    assert time.time() + 590 < exp <= time.time() + 601
    assert verify_signed_url(key, exp, sig, SECRET)
    assert verify_signed_url(key, str(exp), sig, SECRET)
    assert not verify_signed_url("dir/other.txt", exp, sig, SECRET)
    assert not verify_signed_url(key, exp, sig[:-1] + ("0" if sig[-1] != "0" else "1"), SECRET)
    assert not verify_signed_url(key, exp + 1, sig, SECRET)
    assert not verify_signed_url(key, exp, sig, "another-secret-value")
    assert not verify_signed_url(key, exp, sig, SECRET, now=exp + 1)
    assert verify_signed_url(key, exp, sig, SECRET, now=exp)


def test_verify_signed_url_garbage():
    exp = int(time.time()) + 60
    sig = sign_url("k", exp, SECRET)
    assert verify_signed_url("k", exp, sig, SECRET)
    assert not verify_signed_url("k", "soon", sig, SECRET)
    assert not verify_signed_url("k", exp, "ünïcode", SECRET)
    assert not verify_signed_url("../k", exp, sig, SECRET)
    assert not verify_signed_url("k", exp, sig, "")
    with pytest.raises(StorageError):
        sign_url("k", exp, "")


@pytest.mark.parametrize("bad_key", BAD_KEYS)
def test_traversal_refused(store, tmp_path, bad_key):
    calls = [
        lambda: store.put_bytes(b"evil", bad_key),
        lambda: store.put_file(io.BytesIO(b"evil"), bad_key),
        lambda: store.get_bytes(bad_key),
        lambda: store.open(bad_key),
        lambda: store.exists(bad_key),
        lambda: store.delete(bad_key),
        lambda: store.size(bad_key),
        lambda: store.url(bad_key),
    ]
    for call in calls:
        with pytest.raises(InvalidKeyError):
            call()
    assert list(store.iter_keys()) == []
    if isinstance(store, LocalStore):
        # Nothing anywhere under tmp_path: not in the root, not beside it.
        assert all_files(tmp_path) == []


def test_local_symlink_escape_refused(tmp_path):
    store = LocalStore(tmp_path / "root", SECRET, PUBLIC_URL)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    store.root.mkdir()
    (store.root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidKeyError, match="outside"):
        store.get_bytes("link/secret.txt")
    with pytest.raises(InvalidKeyError):
        store.put_bytes(b"evil", "link/new.txt")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert list(store.iter_keys("link/")) == []


def test_local_atomic_writes_leave_no_temp_files(tmp_path):
    store = LocalStore(tmp_path / "root", SECRET, PUBLIC_URL)
    store.put_bytes(b"one", "a/x")
    store.put_bytes(b"two", "a/x")
    store.put_bytes(b"three")
    store.put_file(io.BytesIO(b"three"))
    store.put_file(io.BytesIO(b"four"), "b/y")
    names = [p.name for p in all_files(store.root)]
    assert not [n for n in names if n.startswith(TMP_PREFIX)]
    assert len(names) == 3  # a/x, b/y and one content-addressed blob
    assert oct(store.path_for("a/x").stat().st_mode & 0o777) == oct(0o644)

    # A source that fails mid-copy leaves the old blob intact and no temp file behind.
    with pytest.raises(RuntimeError, match="boom"):
        store.put_file(ChunkGuard(b"z" * (3 * 1024 * 1024), fail_after=1), "a/x")
    with pytest.raises(RuntimeError, match="boom"):
        store.put_file(ChunkGuard(b"z" * (3 * 1024 * 1024), fail_after=1))
    assert store.get_bytes("a/x") == b"two"
    assert [p.name for p in all_files(store.root)] == names


def test_local_temp_files_hidden_from_listing(tmp_path):
    store = LocalStore(tmp_path / "root", SECRET, PUBLIC_URL)
    store.put_bytes(b"x", "d/real")
    (store.root / "d" / f"{TMP_PREFIX}abc.part").write_bytes(b"half")
    assert list(store.iter_keys()) == ["d/real"]


def test_local_key_collides_with_folder(tmp_path):
    store = LocalStore(tmp_path / "root", SECRET, PUBLIC_URL)
    store.put_bytes(b"x", "a/b")
    with pytest.raises(StorageError):
        store.put_bytes(b"y", "a")
    with pytest.raises(StorageError):
        store.put_bytes(b"y", "a/b/c")
    assert store.get_bytes("a/b") == b"x"


def test_s3_failed_stream_leaves_nothing(s3_server):
    store = make_s3_store(s3_server)
    with pytest.raises(Exception, match="boom"):
        store.put_file(ChunkGuard(os.urandom(BIG), fail_after=9 * 1024 * 1024), "half")
    assert not store.exists("half")
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


def test_s3_prefix_and_metadata(s3_server):
    store = make_s3_store(s3_server, prefix="/nested/pre/")
    assert store.prefix == "nested/pre"
    result = store.put_bytes(b"<svg/>", "pic.svg")
    head = store.client.head_object(Bucket=store.bucket, Key="nested/pre/pic.svg")
    assert head["ContentType"] == "image/svg+xml"
    assert head["Metadata"]["sha256"] == result.sha256
    store.put_bytes(b"data", "raw", content_type="application/x-custom")
    assert store.client.head_object(Bucket=store.bucket, Key="nested/pre/raw")["ContentType"] == (
        "application/x-custom"
    )
    assert sorted(store.iter_keys()) == ["pic.svg", "raw"]

    # A second store on the same bucket without prefix sees the full keys.
    bare = S3Store(store.bucket, "", endpoint_url=s3_server)
    assert sorted(bare.iter_keys()) == ["nested/pre/pic.svg", "nested/pre/raw"]
    assert "nested/pre" in store.describe() and store.bucket in store.describe()


def test_s3_ensure_bucket_idempotent_and_missing_bucket(s3_server):
    store = make_s3_store(s3_server)
    store.ensure_bucket()
    store.put_bytes(b"x", "k")
    assert store.get_bytes("k") == b"x"
    ghost = S3Store("pixmo-no-such-bucket", "", endpoint_url=s3_server)
    with pytest.raises(StorageError):
        ghost.put_bytes(b"x", "k")
    with pytest.raises(StorageError):
        list(ghost.iter_keys())


# --------------------------------------------------------------------------- open_store


def settings(tmp_path: Path, **kw) -> Settings:
    base = {"env": "test", "data_dir": tmp_path / "data", "secret_key": SECRET, "public_url": PUBLIC_URL}
    return Settings(_env_file=None, **(base | kw))


def test_open_store_local_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = settings(tmp_path)

    default = open_store(settings=s)
    assert isinstance(default, LocalStore) and default.root == (tmp_path / "data" / "blobs").resolve()
    assert s.data_dir.name in default.describe()

    rel = open_store("file://rel/blobs", s)
    assert isinstance(rel, LocalStore) and rel.root == tmp_path / "rel" / "blobs"
    absolute = open_store(f"file://{tmp_path}/abs", s)
    assert isinstance(absolute, LocalStore) and absolute.root == tmp_path / "abs"
    bare = open_store("bare/dir", s)
    assert isinstance(bare, LocalStore) and bare.root == tmp_path / "bare" / "dir"
    # the other standard spellings of a file URL are that absolute folder, not one under the
    # working directory named "file:" or "localhost"
    assert open_store(f"file:{tmp_path}/abs", s).root == tmp_path / "abs"
    assert open_store(f"file://localhost{tmp_path}/abs", s).root == tmp_path / "abs"
    assert not (tmp_path / "file:").exists() and not (tmp_path / "localhost").exists()

    # The configured secret and public URL sign the links.
    url = bare.url("k")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert url.startswith(PUBLIC_URL + "/blobs/k?")
    assert verify_signed_url("k", query["exp"], query["sig"], SECRET)


def test_a_non_blocking_stream_with_nothing_ready_is_an_error_not_its_end(tmp_path):
    """read() giving None (no data yet) was taken for the end: the blob was stored cut short and
    reported stored."""
    store = LocalStore(tmp_path / "blobs", SECRET, PUBLIC_URL)
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.write(w, b"x" * 1000)  # the rest would come later
    with os.fdopen(r, "rb", buffering=0) as stream, pytest.raises(StorageError, match="non-blocking"):
        store.put_file(stream, key="k.bin")
    os.close(w)
    assert not store.exists("k.bin")


def test_open_store_local_without_secret_fails_only_when_signing(tmp_path):
    s = Settings(_env_file=None, env="prod", data_dir=tmp_path, secret_key=None)
    store = open_store(f"file://{tmp_path}/blobs", s)
    store.put_bytes(b"x", "k")
    assert store.get_bytes("k") == b"x"
    with pytest.raises(Exception, match="PIXMO_SECRET_KEY"):
        store.url("k")


def test_open_store_s3(tmp_path):
    s = settings(tmp_path, s3_endpoint_url="http://127.0.0.1:9", s3_region="eu-west-1")
    store = open_store("s3://my-bucket/some/prefix/", s)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint_url, store.region) == (
        "my-bucket",
        "some/prefix",
        "http://127.0.0.1:9",
        "eu-west-1",
    )
    plain = open_store("s3://bucket-only", s)
    assert isinstance(plain, S3Store) and (plain.bucket, plain.prefix) == ("bucket-only", "")
    via_settings = open_store(settings=settings(tmp_path, storage_url="s3://b/p"))
    assert isinstance(via_settings, S3Store) and via_settings.prefix == "p"


def test_open_store_s3_against_server(s3_server, tmp_path):
    bucket = make_s3_store(s3_server).bucket
    store = open_store(f"s3://{bucket}/x", settings(tmp_path, s3_endpoint_url=s3_server))
    assert store.put_bytes(b"hi").key.startswith("sha256/")
    assert store.get_bytes(next(store.iter_keys())) == b"hi"


def test_s3_store_pickles_by_recipe(s3_server):
    """Export workers and Ray actors get S3 stores by pickle; the boto3 client is rebuilt."""
    import pickle

    store = make_s3_store(s3_server)
    key = store.put_bytes(b"across processes").key
    copy = pickle.loads(pickle.dumps(store))
    assert copy.client is not store.client
    assert (copy.bucket, copy.prefix, copy.endpoint_url) == (store.bucket, store.prefix, store.endpoint_url)
    assert copy.get_bytes(key) == b"across processes"


@pytest.mark.parametrize(
    "url", ["ftp://host/path", "http://example.com/blobs", "gs://bucket/p", "s3://", "s3:///prefix", "", "file://"]
)
def test_open_store_bad_urls(tmp_path, url):
    with pytest.raises(StorageError) as err:
        open_store(url, settings(tmp_path))
    if url:
        assert url in str(err.value)


def test_open_store_s3_bad_prefix(tmp_path):
    with pytest.raises(StorageError, match="prefix"):
        open_store("s3://bucket/../up", settings(tmp_path))


def test_local_links_followed_only_inside_the_root(tmp_path):
    store = LocalStore(tmp_path / "root", SECRET, PUBLIC_URL)
    store.put_bytes(b"inside", "a/real.txt")
    (tmp_path / "outside.txt").write_bytes(b"secret")
    (store.root / "a" / "alias.txt").symlink_to(store.root / "a" / "real.txt")
    (store.root / "a" / "escape.txt").symlink_to(tmp_path / "outside.txt")
    assert store.get_bytes("a/alias.txt") == b"inside"
    for read in (store.get_bytes, store.open):
        with pytest.raises(InvalidKeyError, match="outside"):
            read("a/escape.txt")
    with pytest.raises(BlobNotFoundError):
        store.get_bytes("a/missing.txt")


def _within(seconds, fn, *args):
    """fn(*args) in a thread: its exception, or a failure if it blocks longer than ``seconds``."""
    import threading

    outcome = {}

    def run():
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__}{args} blocked"
    return outcome


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_local_read_of_a_fifo_or_folder_fails_at_once(tmp_path):
    store = LocalStore(tmp_path / "root", SECRET, PUBLIC_URL)
    store.put_bytes(b"x", "a/real.txt")
    os.mkfifo(tmp_path / "outside.fifo")
    os.mkfifo(store.root / "a" / "inside.fifo")
    (store.root / "a" / "escape").symlink_to(tmp_path / "outside.fifo")
    assert isinstance(_within(5, store.get_bytes, "a/escape").get("error"), InvalidKeyError)
    error = _within(5, store.get_bytes, "a/inside.fifo").get("error")
    assert type(error) is StorageError and "not a regular file" in str(error)
    assert isinstance(_within(5, store.get_bytes, "a").get("error"), BlobNotFoundError)
    assert _within(5, store.get_bytes, "a/real.txt") == {"value": b"x"}


def test_s3_client_gives_up_connecting_in_seconds(s3_server):
    from pixmo.storage import CONNECT_TIMEOUT_S

    store = S3Store("pixmo-any", "", endpoint_url=s3_server)
    config = store.client.meta.config
    assert config.connect_timeout == CONNECT_TIMEOUT_S <= 10  # botocore's default is 60 s per attempt


def test_local_get_bytes_asks_for_the_rest_when_a_read_comes_up_short(tmp_path, monkeypatch):
    """One read returns at most ~2 GiB on Linux: the rest is asked for at once, not 64 KiB at a time
    (a 2.2 GB blob took 8 x as long). Simulated with reads capped at 100 kB."""
    import pixmo.storage as storage

    store = LocalStore(tmp_path / "blobs", secret="s", public_url="http://x")
    data = os.urandom(1_000_000)
    store.put_bytes(data, "k/big.bin")
    real_read, calls = os.read, []

    def capped(fd, n):
        calls.append(n)
        return real_read(fd, min(n, 100_000))

    monkeypatch.setattr(storage.os, "read", capped)
    assert store.get_bytes("k/big.bin") == data
    assert len(calls) <= 11  # ten full reads and the one that finds the end (was 17)


def test_local_store_turns_os_errors_into_storage_errors(tmp_path):
    """A link loop in the store, or a source that is a folder, raised RuntimeError/IsADirectoryError
    (a traceback in ingest) instead of a StorageError naming the blob or file."""
    store = LocalStore(tmp_path / "blobs", secret="s", public_url="http://x")
    (tmp_path / "blobs" / "a").mkdir(parents=True)
    os.symlink("loop", tmp_path / "blobs" / "a" / "loop")
    for call in (store.exists, store.size, store.delete, lambda k: store.put_bytes(b"x", k)):
        with pytest.raises(StorageError):
            call("a/loop/x")
    with pytest.raises(StorageError, match="cannot read source file"):
        store.put_file(tmp_path)  # a folder


def test_s3_links_for_browsers_are_signed_for_the_public_endpoint(s3_server):
    """docker compose: the app reaches MinIO at http://minio:9000, browsers cannot; links presigned
    for the inner host never loaded. With a public endpoint they name (and are signed for) it."""
    import pickle

    import httpx

    inner = make_s3_store(s3_server)
    inner.put_bytes(b"pixels", "img/a.png")
    public = s3_server.replace("127.0.0.1", "localhost")
    store = S3Store(inner.bucket, inner.prefix, endpoint_url=s3_server, public_endpoint_url=public)
    url = store.url("img/a.png")
    assert url.startswith(public + "/") and inner.url("img/a.png").startswith(s3_server + "/")
    assert httpx.get(url).content == b"pixels"  # the signature holds for the public host
    assert pickle.loads(pickle.dumps(store)).url("img/a.png").startswith(public + "/")  # workers keep it
