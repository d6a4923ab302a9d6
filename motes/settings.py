"""Settings: typed, read once at start-up from ``MOTES_*`` variables or a TOML file.

Every setting has a default and a help line (``Settings.model_fields[...].description``);
``docs/configuration.md`` lists them all and a test keeps the two in step.

    settings = Settings()                      # environment + defaults
    settings = Settings(data_dir=Path("/srv"))  # explicit values win over the environment
    settings = Settings.from_toml(Path("motes.toml"))
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOTES_", extra="forbid")

    data_dir: Path = Field(
        Path("motes-data"), description="Directory holding the telemetry store and registry."
    )
    http_host: str = Field("127.0.0.1", description="Address the HTTP API binds to.")
    http_port: int = Field(8086, description="Port of the HTTP API.")
    mqtt_port: int = Field(
        1883,
        description=(
            "Port of the MQTT listener (TCP); 0 turns it off. If the default port is taken, "
            "Motes starts without it and logs a warning."
        ),
    )
    mqtt_tls_port: int = Field(8883, description="Port of the MQTT listener over TLS.")
    mqtt_tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) for MQTT over TLS; TLS is off without it."
    )
    mqtt_tls_key: Path | None = Field(
        None, description="PEM private key for MQTT over TLS (default: in the certificate file)."
    )
    mqtt_tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle: when set, MQTT TLS clients must present a certificate."
    )
    mqtt_max_packet_bytes: int = Field(
        8 * 1024 * 1024,
        description="Largest MQTT packet accepted; larger ones close the connection.",
    )
    mqtt_max_connections: int = Field(100_000, description="MQTT connections accepted at once.")
    mqtt_max_queued_messages: int = Field(
        10_000,
        description="QoS 1/2 messages kept per MQTT session for an offline or slow subscriber.",
    )
    mqtt_url: str | None = Field(
        None,
        description=(
            "External broker to consume device traffic from (mqtt://user:token@host:1883 or "
            "mqtts://...), instead of the embedded listeners; see docs/mqtt.md."
        ),
    )
    mqtt_share_group: str = Field(
        "motes", description="Shared-subscription group the Motes processes consume in."
    )
    mqtt_client_id: str | None = Field(
        None,
        description=(
            "Client id at the external broker; set a stable, per-process id to keep a "
            "persistent session (default: motes-<host>-<pid>, clean session)."
        ),
    )
    mqtt_service_user: str = Field(
        "motes", description="User name the Motes worker signs in with at an external broker."
    )
    mqtt_hook_secret: str | None = Field(
        None,
        description=(
            "Enables the external-broker auth/ACL hooks; their callers must send "
            "Authorization: Bearer <secret>."
        ),
    )
    mqtt_dynsec_url: str | None = Field(
        None,
        description=(
            "Admin URL of a Mosquitto with the dynamic-security plugin "
            "(mqtt://admin:password@host:1883): devices and channels are kept in step there."
        ),
    )
    mqtt_session_expiry_seconds: int = Field(
        7 * 24 * 3600, description="Longest an offline persistent MQTT session is kept."
    )
    init_org: str = Field("main", description="Name of the org created on first start.")
    init_bucket: str = Field("telemetry", description="Name of the bucket created on first start.")
    init_token: str | None = Field(
        None,
        description=(
            "Operator token created on first start (16 characters or more); "
            "generated and printed once if unset."
        ),
    )
    init_admin_email: str | None = Field(
        None,
        description="Email of an operator account created (owner of the first org) on first start.",
    )
    init_admin_password: str | None = Field(
        None, description="Password of that account (8 characters or more)."
    )
    secret_key: str | None = Field(
        None,
        description=(
            "Master key (base64 of 32 random bytes) that encrypts secrets and signs access "
            "tokens; generated into <data dir>/secret-key if unset. Share it across processes."
        ),
    )
    access_token_seconds: int = Field(
        900, ge=60, le=86400, description="Lifetime of OAuth2 access tokens (JWT)."
    )
    refresh_token_seconds: int = Field(
        30 * 86400, ge=300, description="Lifetime of a sign-in session (its refresh tokens)."
    )
    registry_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the registry; default: SQLite file in the data dir.",
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024, description="Largest accepted request body, after decompression."
    )
    write_queue_points: int = Field(
        4_000_000,
        description="Points waiting for a commit before writes are refused with 503.",
    )
    compact_rows: int = Field(
        2_000_000,
        description="Rows in a measurement's write table that trigger a sorted compaction.",
    )
    duckdb_memory_limit: str = Field(
        "1GB", description="Memory limit of the embedded DuckDB engine."
    )
    duckdb_threads: int = Field(2, description="Threads DuckDB may use for queries and compaction.")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")

    @classmethod
    def from_toml(cls, path: Path, **overrides: Any) -> Settings:
        """Settings from a TOML file: keyword overrides win, then ``MOTES_*``, then the file."""
        with path.open("rb") as fh:
            values = tomllib.load(fh)
        # the environment outranks the file: drop what a MOTES_* variable sets
        values = {k: v for k, v in values.items() if f"MOTES_{k.upper()}" not in os.environ}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def telemetry_path(self) -> Path:
        return self.data_dir / "telemetry.duckdb"

    @property
    def registry_sqlalchemy_url(self) -> str:
        return self.registry_url or f"sqlite:///{self.data_dir / 'registry.sqlite'}"

    @property
    def secret_key_path(self) -> Path:
        return self.data_dir / "secret-key"

    @property
    def token_path(self) -> Path:
        return self.data_dir / "operator-token"
