"""Connection settings of the prompt store, read from the environment (prefix INSPECT_REDIS_).

Example:
    INSPECT_REDIS_URL=rediss://redis.line3.example:6380/0
    INSPECT_REDIS_PASSWORD=...            # or inside the URL: rediss://:pw@host:6380/0
    INSPECT_REDIS_SSL_CA_CERTS=/etc/inspect/redis-ca.pem
    INSPECT_REDIS_SSL_CERT_REQS=required

TLS options only apply to `rediss://` URLs; giving them with a plain `redis://` URL is refused
rather than silently ignored, because that usually means someone believes traffic is encrypted.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_IMAGE_BYTES = 8 * 1024 * 1024


class StoreSettings(BaseSettings):
    """How to reach Redis and the store's own limits."""

    # hide_input_in_errors: a validation error must not print the URL or password it refused.
    model_config = SettingsConfigDict(
        env_prefix="INSPECT_REDIS_", extra="ignore", hide_input_in_errors=True
    )

    # redis://[[user]:password@]host:port/db, rediss:// for TLS, or unix:///path/redis.sock
    url: str = "redis://127.0.0.1:6379/0"
    # Kept secret in reprs and logs; give it here or in the URL, not both (refused as ambiguous).
    password: SecretStr | None = None
    # Redis ACL user name (Redis 6+); None uses the URL's or the default user.
    username: str | None = None
    # TLS: whether the server certificate must verify ("required" unless you know why not).
    ssl_cert_reqs: Literal["required", "optional", "none"] = "required"
    # TLS: CA bundle to verify the server with (None: the system store).
    ssl_ca_certs: Path | None = None
    # TLS: client certificate and key for mutual TLS (both or neither).
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    # TLS: check that the certificate names the host in the URL.
    ssl_check_hostname: bool = True
    # Seconds to wait for one command's reply before declaring Redis unavailable.
    socket_timeout: float = Field(default=5.0, gt=0, le=300)
    # Seconds to wait for the TCP/TLS connection.
    socket_connect_timeout: float = Field(default=2.0, gt=0, le=60)
    # Extra attempts for idempotent operations after a connection error or timeout.
    retries: int = Field(default=3, ge=0, le=20)
    # First backoff in seconds; doubles each attempt (with jitter) up to retry_backoff_cap.
    retry_backoff_base: float = Field(default=0.05, gt=0, le=10)
    retry_backoff_cap: float = Field(default=2.0, gt=0, le=60)
    # Largest encoded source image stored for re-extraction; Redis keeps it in RAM.
    max_image_bytes: int = Field(default=DEFAULT_MAX_IMAGE_BYTES, gt=0, le=256 * 1024 * 1024)
    # Pool size per process (concurrent commands).
    max_connections: int = Field(default=64, ge=1, le=10_000)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(f"url scheme must be redis, rediss or unix, got {parts.scheme!r}")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("url has no host")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> StoreSettings:
        uses_tls = urlsplit(self.url).scheme == "rediss"
        tls_files = (self.ssl_ca_certs, self.ssl_certfile, self.ssl_keyfile)
        tls_given = any(tls_files) or self.ssl_cert_reqs != "required"
        if tls_given and not uses_tls:
            raise ValueError("TLS options are set but the url is not rediss://")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        if self.password is not None and urlsplit(self.url).password is not None:
            raise ValueError("the password is given both in the url and in password; keep one")
        if self.retry_backoff_cap < self.retry_backoff_base:
            raise ValueError("retry_backoff_cap must be >= retry_backoff_base")
        return self

    @property
    def uses_tls(self) -> bool:
        """True for rediss:// URLs."""
        return urlsplit(self.url).scheme == "rediss"

    def redacted_url(self) -> str:
        """The URL with any password removed: safe for errors and logs."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """Drop the password (keep the user) from a Redis URL."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{user}{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@lru_cache
def get_settings() -> StoreSettings:
    """Process-wide settings (read the environment once); tests build StoreSettings directly."""
    return StoreSettings()
