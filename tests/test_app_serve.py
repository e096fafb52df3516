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
        for _ in range(300):
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert "Log in" in httpx.get(base + "/login").text
        assert httpx.post(base + "/login", data={"username": "nobody", "password": "x" * 8}).status_code == 401
        assert httpx.get(base + "/api/me").status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=20)
