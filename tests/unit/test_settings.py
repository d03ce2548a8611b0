"""Settings: environment variables, defaults, and documentation kept in step."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomweb_server.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    for name in Settings.model_fields:
        assert f"`DICOMWEB_{name.upper()}`" in text, f"DICOMWEB_{name.upper()} is not documented"


def test_defaults_are_the_embedded_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMWEB_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 'index.sqlite').resolve()}"
    assert settings.resolved_storage_path == (tmp_path / "blobs").resolve()
    assert settings.url_prefix == "/dicom-web"
    assert settings.allow_overwrite is False


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMWEB_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("DICOMWEB_ALLOW_OVERWRITE", "true")
    monkeypatch.setenv("DICOMWEB_URL_PREFIX", "wado/")
    settings = Settings()
    assert settings.resolved_database_url == "postgresql://u@h/db"
    assert settings.allow_overwrite is True
    assert settings.url_prefix == "/wado"
