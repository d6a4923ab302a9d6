"""``motes db upgrade``: bring the registry database to the newest schema.

    motes db upgrade --data-dir /srv/motes
    motes db upgrade --registry-url postgresql+psycopg://motes@db/motes

Settings are built as ``motes serve`` builds them (:func:`load_settings`), so the same
options, ``MOTES_*`` variables and ``--config`` file reach the same database.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from motes.settings import Settings


def load_settings(config: Path | None, **given: Any) -> Settings:
    """Options given win over the --config file, then MOTES_* variables, then defaults."""
    # Only options actually given override: None would mask MOTES_* and the TOML file.
    overrides = {name: value for name, value in given.items() if value is not None}
    try:
        return Settings.from_toml(config, **overrides) if config else Settings(**overrides)
    except (ValidationError, tomllib.TOMLDecodeError) as exc:
        raise click.ClickException(f"invalid settings: {exc}") from exc


@click.group()
def db() -> None:
    """Manage the registry database."""


@db.command("upgrade")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the registry (its SQLite file, unless --registry-url).",
)
@click.option("--registry-url", help="SQLAlchemy URL of the registry.")
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML settings file (options given here win over it).",
)
def upgrade(data_dir: Path | None, registry_url: str | None, config: Path | None) -> None:
    """Run the registry migrations up to the newest; print the revision reached.

    Safe to run again: a registry already there is left as it is. `motes serve` runs
    them at start too; this is for upgrading ahead of a restart, or a shared registry.
    """
    settings = load_settings(config, data_dir=data_dir, registry_url=registry_url)
    url = settings.registry_sqlalchemy_url
    # Imported here: Alembic and SQLAlchemy are not needed by the client commands.
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError as exc:  # its message repeats the URL, password and all
        raise click.ClickException(
            "invalid registry URL: expected dialect[+driver]://user:password@host/database"
        ) from exc
    try:
        if settings.registry_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        revision, head = _upgrade(url)
    except (SQLAlchemyError, OSError, ImportError) as exc:  # ImportError: driver missing
        reason = str(getattr(exc, "orig", None) or exc).partition("\n")[0]  # no SQLAlchemy links
        raise click.ClickException(f"cannot upgrade the registry at {shown}: {reason}") from exc
    state = "the newest" if revision == head else f"the newest is {head}"
    click.echo(f"Registry at {shown}: revision {revision} ({state}).")


def _upgrade(url: str) -> tuple[str | None, str | None]:
    """Upgrade; the revision the database is at afterwards, and the scripts' head."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    from motes.registry import migrations

    migrations.upgrade(url)
    head = ScriptDirectory.from_config(migrations.alembic_config(url)).get_current_head()
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    return revision, head
