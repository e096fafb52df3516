"""docker-compose.yml is checked by parsing (no Docker engine here): services, env, dependencies."""

from __future__ import annotations

from pathlib import Path

import yaml

from pixmo.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_compose_services_and_settings():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "app", "worker", "dashboard", "vllm"} <= set(services)
    fields = {f"PIXMO_{name.upper()}" for name in Settings.model_fields}
    for name in ("app", "worker", "dashboard", "init"):
        env = services[name]["environment"]
        unknown = {k for k in env if k.startswith("PIXMO_")} - fields
        assert not unknown, f"{name} sets settings that do not exist: {unknown}"
        assert env["PIXMO_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["PIXMO_STORAGE_URL"].startswith("s3://")
        for dep in services[name].get("depends_on", {}):
            assert dep in services
    assert services["vllm"]["profiles"] == ["vllm"]
    assert (ROOT / "Dockerfile").is_file()
