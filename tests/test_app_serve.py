"""`pixmo serve` as a real process on the embedded defaults."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from pixmo.cli import app

PIXMO = str(Path(sys.executable).with_name("pixmo"))


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXMO_")}
    return env | {"PIXMO_DATA_DIR": str(tmp_path / "data"), **extra}


def _wait_until_up(base: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)


def test_serve_help_and_refusal_without_a_secret(tmp_path):
    assert "--port" in CliRunner().invoke(app, ["serve", "--help"]).output
    r = subprocess.run([PIXMO, "serve"], env=_env(tmp_path, PIXMO_ENV="prod"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "PIXMO_SECRET_KEY" in r.stderr


def test_serve_runs_the_app(tmp_path):
    env = _env(tmp_path, PIXMO_ENV="dev")
    subprocess.run([PIXMO, "init"], env=env, check=True, capture_output=True, timeout=120)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([PIXMO, "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base)
        assert "Log in" in httpx.get(base + "/login").text
        assert httpx.post(base + "/login", data={"username": "nobody", "password": "x" * 8}).status_code == 401
        assert httpx.get(base + "/api/me").status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _own_address() -> str | None:
    """An address of this machine other than loopback (None if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_serve_trusts_the_forwarded_client_address_only_from_the_named_proxy(tmp_path):
    """Behind a proxy every login seemed to come from the proxy (one shared rate limit for everyone):
    --forwarded-allow-ips names it, and then the client's address is the one recorded."""
    import pytest

    proxy = _own_address()
    if proxy is None:
        pytest.skip("this machine has no address but loopback to play the proxy")
    env = _env(tmp_path, PIXMO_ENV="dev")
    subprocess.run([PIXMO, "init"], env=env, check=True, capture_output=True, timeout=120)
    recorded = {}
    for trusted in (None, proxy):
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        args = [PIXMO, "serve", "--host", "0.0.0.0", "--port", str(port)] + (["--forwarded-allow-ips", trusted] if trusted else [])
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        base = f"http://{proxy}:{port}"
        try:
            _wait_until_up(base)
            name = f"user-{port}"
            httpx.post(base + "/login", data={"username": name, "password": "x" * 8},
                       headers={"X-Forwarded-For": "203.0.113.9", "Origin": base})
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        import sqlite3

        with sqlite3.connect(tmp_path / "data" / "pixmo.db") as con:
            recorded[trusted] = con.execute("select ip from login_attempts where username = ?", (name,)).fetchone()[0]
    assert recorded == {None: proxy, proxy: "203.0.113.9"}
