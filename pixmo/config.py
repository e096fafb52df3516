"""One settings object for the whole toolkit (environment prefix ``PIXMO_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pixmo.errors import ConfigError

DEFAULT_SECRET = "change-me"


class Settings(BaseSettings):
    """Every setting of the toolkit; see the README table."""

    # an empty variable is an unset one: docker-compose passes ${VAR:-} through as ""
    model_config = SettingsConfigDict(env_prefix="PIXMO_", env_file=".env", extra="ignore", env_ignore_empty=True)

    env: Literal["dev", "test", "prod"] = Field("prod", description="dev and test allow the default secret.")
    data_dir: Path = Field(Path("./pixmo-data"), description="Where embedded defaults keep their files.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file `<data_dir>/pixmo.db`."
    )
    storage_url: str | None = Field(
        None, description="`file://PATH` or `s3://bucket/prefix`; default: `file://<data_dir>/blobs`."
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto); empty for AWS.")
    s3_region: str = Field("us-east-1", description="S3 region name.")
    s3_public_endpoint_url: str | None = Field(
        None, description="Where browsers reach the S3 endpoint, if not at s3_endpoint_url (docker compose: "
                          "http://localhost:9000); the app's image and audio links are signed for it.")
    secret_key: SecretStr | None = Field(None, description="Signs sessions and blob URLs; required unless env=dev.")
    public_url: str = Field("http://127.0.0.1:8000", description="Base URL of the app, for signed blob URLs.")
    max_image_pixels: int = Field(100_000_000, description="Larger images are refused as decompression bombs.")
    max_upload_bytes: int = Field(50 * 1024 * 1024, description="Largest accepted upload (audio, image).")
    llm_backend: Literal["local", "openai"] = Field("local", description="LLM for the app's ask-the-model task.")
    llm_model: str | None = Field(None, description="LLM model name or path; default: the bundled SmolLM2.")
    llm_base_url: str | None = Field(None, description="OpenAI-compatible server for the openai backend.")
    llm_api_key: SecretStr | None = Field(None, description="Key for the openai backend.")
    llm_cache_dir: str | None = Field(
        None, description="Where the de-quantized local model is kept (`off` disables); default ~/.cache/pixmo/llm."
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'pixmo.db').as_posix()}"

    @property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return f"file://{(self.data_dir / 'blobs').as_posix()}"

    def require_secret(self) -> str:
        """The secret key, or ConfigError when it is missing or the default outside dev."""
        value = self.secret_key.get_secret_value() if self.secret_key else ""
        if self.env in ("dev", "test"):
            return value or DEFAULT_SECRET
        if not value or value == DEFAULT_SECRET or len(value) < 16:
            raise ConfigError(
                "PIXMO_SECRET_KEY is missing, the default, or shorter than 16 characters; "
                "set a long random value (or PIXMO_ENV=dev for local trials)."
            )
        return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
