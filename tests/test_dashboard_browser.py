"""`pixmo dashboard` for real: start it on a free loopback port, log in with headless Chromium,
and screenshot the overview with its funnel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image as PILImage

from pixmo.db.migrate import upgrade
from pixmo.db.session import Database
from pixmo.storage import LocalStore
from tests.dashboard_helpers import PASSWORD, free_port, seed_curation

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _pixmo_command() -> list[str]:
    exe = Path(sys.executable).with_name("pixmo")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "pixmo.cli"]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"pixmo dashboard exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError("pixmo dashboard did not become healthy")


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")
def test_pixmo_dashboard_overview_screenshot(tmp_path):
    from playwright.sync_api import sync_playwright

    data_dir = tmp_path / "pixmo-data"
    db_url = f"sqlite:///{data_dir / 'pixmo.db'}"
    upgrade(db_url)
    db = Database(db_url)
    seed_curation(db, LocalStore(data_dir / "blobs", secret="x" * 32, public_url="http://127.0.0.1"), tmp_path / "export")
    db.dispose()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXMO_")}
    env |= {"PIXMO_ENV": "test", "PIXMO_DATA_DIR": str(data_dir)}
    proc = subprocess.Popen([*_pixmo_command(), "dashboard", "--port", str(port), "--host", "127.0.0.1"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    shot = tmp_path / "overview.png"
    try:
        _wait_healthy(url, proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("textbox", name="Username").fill("demo-reviewer")
            page.get_by_role("textbox", name="Password", exact=True).fill(PASSWORD)
            page.get_by_role("button", name="Log in", exact=True).click()
            page.get_by_role("heading", name="Funnel").wait_for(timeout=60_000)
            page.get_by_text("demo-captions · caption").wait_for(timeout=30_000)
            page.locator("[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg").first.wait_for(
                timeout=30_000)
            page.wait_for_timeout(1500)  # let the charts finish drawing before the picture
            page.screenshot(path=str(shot), full_page=True)
            body = page.inner_text("body")
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    for needle in ("Overview", "Funnel", "demo-captions · caption", "demo-points · points", "transcribed", "exported",
                   "Collection over time"):
        assert needle in body, needle
    keep = os.environ.get("DASHBOARD_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "dashboard-overview.png")
    with PILImage.open(shot) as im:
        assert im.width >= 1400 and im.height >= 1700
        colours = im.convert("RGB").resize((280, 200)).getcolors(maxcolors=1 << 16)
        assert colours is not None and len(colours) > 50  # charts and text, not a blank page
