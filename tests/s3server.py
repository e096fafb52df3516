"""A real S3-compatible server (moto's server mode) on loopback, for tests.

Use it from any test module with::

    from tests.s3server import s3_server  # noqa: F401

and take ``s3_server`` (the endpoint URL) as a fixture argument. The server runs
once per test session; give each test its own bucket (see :func:`make_s3_store`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    # Keep a developer's ~/.aws and any HTTP proxy out of the way.
    "AWS_CONFIG_FILE": "/nonexistent/pixmo-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/pixmo-test-aws-credentials",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 with dummy credentials; yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for name, value in DUMMY_ENV.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def make_s3_store(endpoint_url: str, prefix: str = "pfx"):
    """An S3Store on a fresh, newly created bucket of the server at ``endpoint_url``."""
    from pixmo.storage import S3Store

    store = S3Store(
        f"pixmo-test-{uuid.uuid4().hex[:12]}", prefix, endpoint_url=endpoint_url, region="us-east-1"
    )
    store.ensure_bucket()
    return store
