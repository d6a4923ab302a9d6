"""Every setting is documented in docs/configuration.md."""

from __future__ import annotations

from pathlib import Path

from motes.settings import Settings


def test_settings_are_documented() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    for name, field in Settings.model_fields.items():
        assert f"`MOTES_{name.upper()}`" in doc, name
        assert field.description, name
