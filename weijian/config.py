"""One settings object for the whole platform, built from WEIJIAN_* variables and `.env`."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The password of the platform's account on the project's own local broker (`make services`).
# It is only accepted while the broker is on this machine; see `_refuse_local_secret_remotely`.
LOCAL_BROKER_PASSWORD = "weijian"
LOCAL_BROKER_URL = f"mqtt://weijian:{LOCAL_BROKER_PASSWORD}@127.0.0.1:1884"


class MqttTarget:
    """The parts of an mqtt:// or mqtts:// URL."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"MQTT URL has no host: {url!r}")
        self.url = url
        self.tls = parts.scheme == "mqtts"
        self.host: str = parts.hostname
        self.port: int = parts.port or (8883 if self.tls else 1883)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None

    @property
    def public_url(self) -> str:
        """The URL without credentials, as shown to devices and in logs."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class Settings(BaseSettings):
    """Runtime configuration. Defaults run on one machine with no configuration at all."""

    model_config = SettingsConfigDict(
        env_prefix="WEIJIAN_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = "postgresql://postgres@127.0.0.1:5432/weijian"
    mqtt_url: str = LOCAL_BROKER_URL
    # What devices are told to connect to (defaults to mqtt_url without its credentials).
    mqtt_public_url: str | None = None
    # Topic root of the device protocol; tests use a unique root per test.
    mqtt_topic_root: str = "weijian/v1"
    # Shared-subscription group of the ingest workers ($share/<group>/...).
    mqtt_share_group: str = "ingest"
    # MQTT client id prefix of the platform's persistent sessions.
    mqtt_client_id: str = "weijian-ingest"
    # How long the broker keeps an ingest session (and queues for it) while it is away.
    mqtt_session_expiry_s: int = Field(default=14 * 24 * 3600, ge=0)

    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8000, ge=1, le=65535)
    # Signing key for API tokens; when unset, a random key is generated once and kept in
    # the database.
    secret_key: str | None = None
    token_ttl_minutes: int = Field(default=12 * 60, ge=1)

    # Ingest batching
    ingest_workers: int = Field(default=1, ge=1, le=64)
    # Detection processes of `weijian up`, each judging the sites whose id hashes to it.
    detect_workers: int = Field(default=1, ge=1, le=32)
    ingest_batch_max: int = Field(default=5000, ge=1)
    ingest_batch_wait_ms: int = Field(default=50, ge=1)
    # Largest accepted payload; larger ones are dead-lettered (the raw bytes are truncated there).
    ingest_max_payload_bytes: int = Field(default=256 * 1024, ge=1024)
    # Readings whose device time is further than this from the receive time are rejected.
    ingest_max_clock_offset_days: float = Field(default=30.0, gt=0)
    # A device's last_seen_at is rewritten at most this often per worker (status changes at
    # once): presence needs seconds, not a row update per device per batch.
    ingest_presence_refresh_s: float = Field(default=5.0, ge=0)

    # Notifications
    # console: log only; webhook: the bureau's SMS gateway (vendor SDKs sit behind it).
    sms_provider: Literal["console", "webhook"] = "console"
    sms_webhook_url: str | None = None
    sms_sign_name: str = "卫生监督所"
    sms_rate_per_recipient_per_hour: int = Field(default=20, ge=1)

    # Inspections
    inspection_seed: int | None = None  # fixes the random draw (tests, reproducible demos)

    log_level: str = "INFO"

    @field_validator("mqtt_url", "mqtt_public_url")
    @classmethod
    def _valid_mqtt_url(cls, value: str | None) -> str | None:
        if value is not None:
            MqttTarget(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _valid_database_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("WEIJIAN_DATABASE_URL must be a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _refuse_local_secret_remotely(self) -> Settings:
        target = self.mqtt
        if target.password == LOCAL_BROKER_PASSWORD and not target.is_loopback:
            raise ValueError(
                "WEIJIAN_MQTT_URL uses the local development password on a remote broker; "
                "set a real password for the platform account"
            )
        return self

    @cached_property
    def mqtt(self) -> MqttTarget:
        return MqttTarget(self.mqtt_url)

    @property
    def broker_public_url(self) -> str:
        if self.mqtt_public_url:
            return MqttTarget(self.mqtt_public_url).public_url
        return self.mqtt.public_url


def get_settings(**overrides: object) -> Settings:
    """Build the settings from the environment and `.env`, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
