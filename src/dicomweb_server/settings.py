"""One typed settings object, read from ``DICOMWEB_*`` environment variables.

Everything that a deployment may want to change lives here so that the rest of the code
receives its configuration explicitly instead of reading the environment itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration of the archive.

    The defaults describe the embedded archive: SQLite in WAL mode and a blob folder under
    ``data_dir``. Production points ``database_url`` at PostgreSQL.
    """

    model_config = SettingsConfigDict(env_prefix="DICOMWEB_", extra="ignore")

    data_dir: Path = Field(
        default=Path("data"), description="Folder for the embedded index and blobs."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; defaults to SQLite at <data_dir>/index.sqlite."
    )
    storage_path: Path | None = Field(
        default=None, description="Blob folder; defaults to <data_dir>/blobs."
    )
    public_base_url: str | None = Field(
        default=None,
        description="Absolute URL of the DICOMweb root as clients see it (behind a proxy). "
        "When unset, URLs are built from Forwarded / X-Forwarded-* / Host headers.",
    )
    url_prefix: str = Field(default="/dicom-web", description="Path of the DICOMweb root.")
    trust_forwarded_headers: bool = Field(
        default=True,
        description="Build URLs from Forwarded / X-Forwarded-* headers (disable when clients "
        "reach the archive directly rather than through a proxy that sets them).",
    )

    allow_overwrite: bool = Field(
        default=False,
        description="Replace a stored instance when different bytes arrive under its SOP "
        "Instance UID, instead of refusing them.",
    )
    bulk_data_threshold: int = Field(
        default=1024,
        ge=0,
        description="Binary values longer than this many bytes are returned as BulkDataURI.",
    )
    qido_default_limit: int = Field(
        default=1000, ge=1, description="Results when no limit is given."
    )
    qido_max_limit: int = Field(default=10000, ge=1, description="Most results one query returns.")
    max_request_bytes: int = Field(
        default=64 * 1024**3, ge=1, description="Largest accepted STOW request body."
    )
    max_part_header_bytes: int = Field(
        default=16 * 1024, ge=256, description="Largest accepted multipart part header block."
    )
    retrieve_chunk_bytes: int = Field(
        default=1024 * 1024, ge=4096, description="Read size when streaming stored files."
    )
    sqlite_busy_timeout_ms: int = Field(default=30000, ge=0)

    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call the archive (CORS), comma-separated, "
        "e.g. https://viewer.example.org; '*' allows any origin. Empty: no CORS headers.",
    )
    imaging_workers: int = Field(
        default=2,
        ge=1,
        description="Threads that decode, encode and render pixel data; CPU-heavy work "
        "waits for one of them instead of stalling other requests.",
    )
    max_render_pixels: int = Field(
        default=2**28,
        ge=1,
        description="Most pixel samples (Rows x Columns x Samples per Pixel x frames) one "
        "decode may produce for rendering or transcoding: a decompression-bomb guard. "
        "Beyond it the request is answered 400; the data can still be retrieved as stored.",
    )
    max_frames_per_request: int = Field(
        default=10_000, ge=1, description="Most frame numbers one frames request may list."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("url_prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        value = "/" + value.strip("/")
        return "" if value == "/" else value

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def resolved_storage_path(self) -> Path:
        """The blob folder, defaulting to ``<data_dir>/blobs``."""
        return (self.storage_path or self.data_dir / "blobs").resolve()
