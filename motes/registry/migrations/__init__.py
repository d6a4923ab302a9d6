"""Alembic migrations of the registry; run with ``motes.registry.migrations.upgrade(url)``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the registry database at ``url`` to ``revision`` (idempotent)."""
    command.upgrade(alembic_config(url), revision)
