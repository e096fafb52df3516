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
    # the app's LLM can be pointed at the vllm service from .env; left empty, a setting is unset
    assert services["app"]["environment"]["PIXMO_LLM_BASE_URL"] == "${PIXMO_LLM_BASE_URL:-}"
    # browsers fetch blobs from MinIO: its API port is published and links are signed for it
    assert "9000:9000" in services["minio"]["ports"] and "127.0.0.1:9001:9001" in services["minio"]["ports"]
    # MinIO's keys come from .env, required, never a pair published with the code
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"].startswith("${MINIO_ROOT_PASSWORD:?")
    assert services["app"]["environment"]["AWS_SECRET_ACCESS_KEY"].startswith("${MINIO_ROOT_PASSWORD:?")
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    # every setting a deployment may need reaches the containers (a key for a hosted LLM did not)
    for name in ("PIXMO_LLM_API_KEY", "PIXMO_MAX_UPLOAD_BYTES", "PIXMO_MAX_IMAGE_PIXELS"):
        assert name in services["app"]["environment"], name
    assert services["app"]["environment"]["PIXMO_S3_PUBLIC_ENDPOINT_URL"].endswith(":9000}")
    for name in ("postgres", "minio", "app", "worker", "dashboard"):
        assert services[name]["restart"] == "unless-stopped", name
    assert services["worker"]["command"][:2] == ["pixmo", "worker"]
    from typer.testing import CliRunner

    from pixmo.cli import app  # the worker's command line parses (a bad option would loop restarting)
    args = services["worker"]["command"][1:]
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert (ROOT / "Dockerfile").is_file()


def test_an_empty_setting_is_an_unset_one(monkeypatch):
    """Compose passes ``${PIXMO_LLM_MODEL:-}`` through as an empty string: it must mean the default
    (the bundled model), not a model named ""."""
    monkeypatch.setenv("PIXMO_LLM_MODEL", "")
    monkeypatch.setenv("PIXMO_LLM_BASE_URL", "")
    monkeypatch.setenv("PIXMO_LLM_BACKEND", "")
    s = Settings()
    assert (s.llm_model, s.llm_base_url, s.llm_backend) == (None, None, "local")
