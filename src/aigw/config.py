"""Settings, read from ``AIGW_*`` environment variables.

Nothing is built at import time: :func:`get_settings` constructs the settings
on first use, and :func:`resolve_generated_secrets` fills the secrets an
operator did not configure from files in the data folder (creating them with
mode 0600 on first start), so the one-command start works while a configured
value always wins.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import platformdirs
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger("aigw.config")

ADMIN_TOKEN_FILE = "admin_token"  # noqa: S105 - a file name
ENCRYPTION_KEYS_FILE = "encryption_keys"
TOKEN_PEPPER_FILE = "token_pepper"  # noqa: S105 - a file name

# Values an operator might paste from an example; refusing them beats running
# a gateway whose secrets are public.
_PLACEHOLDERS = {"changeme", "change-me", "secret", "admin", "password", "example"}


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("aigw", appauthor=False))


class Settings(BaseSettings):
    """Every knob of the gateway. See README for the documented variables."""

    model_config = SettingsConfigDict(env_prefix="AIGW_", extra="ignore", env_file=None)

    database_url: str | None = None
    data_dir: Path = Field(default_factory=default_data_dir)
    admin_token: SecretStr | None = None
    # "kid:base64(32 bytes)" entries, comma-separated; the first encrypts, all decrypt.
    encryption_keys: SecretStr | None = None
    token_pepper: SecretStr | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    allow_private_upstreams: bool = True

    # Upstream bounds, in seconds.
    upstream_connect_timeout: float = Field(default=10.0, gt=0)
    upstream_first_byte_timeout: float = Field(default=60.0, gt=0)
    upstream_idle_timeout: float = Field(default=60.0, gt=0)
    upstream_total_timeout: float = Field(default=600.0, gt=0)
    upstream_max_connections: int = Field(default=1000, ge=1)
    # Seconds an idle pooled upstream connection is kept. Below the 5 s keep-alive
    # of uvicorn-based model servers (vLLM, ...): a pooled connection is dropped by
    # us before the server can close it under a request. Tests that wait for the
    # pool to empty set it lower.
    upstream_keepalive_expiry: float = Field(default=4.0, gt=0, le=3600)
    # Bytes of one non-streamed upstream answer, and of one SSE event: past either
    # the exchange fails with 502 (or a final error event), rather than the
    # gateway buffering without end.
    upstream_max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    upstream_max_event_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Seconds one write to a client may wait (a client that stops reading): past
    # it the client is dropped and its upstream request closed at once.
    client_write_timeout: float = Field(default=30.0, gt=0)

    # Counting: bodies beyond this many characters of text are not tokenized
    # exactly (the count is bounded from below and the request is rejected or
    # forwarded by policy); see aigw.proxy.counting.
    max_tokenize_chars: int = Field(default=2_000_000, ge=1000)
    # Bodies larger than count_process_bytes are parsed and counted in up to
    # count_processes worker processes (started on first use; 0: in threads of
    # this process), at most count_queue at once (past that: 503 counting_busy);
    # workers exit after count_process_idle seconds without a large body.
    # See aigw.proxy.counting.offload.
    count_processes: int = Field(default=1, ge=0, le=64)
    count_process_bytes: int = Field(default=256 * 1024, ge=0)
    count_queue: int = Field(default=8, ge=1, le=10_000)
    count_process_idle: float = Field(default=60.0, gt=0)
    # Start one counting worker once the gateway is ready (and again after each
    # idle exit) and have it import and load the encodings in use, so the first
    # large body does not wait for a cold worker. Off by default: the warm worker
    # holds ~150 MB for as long as the gateway runs, which nearly doubles an idle
    # gateway's footprint; gateways that take large bodies often turn it on.
    count_warm: bool = False
    # Providers with input_counting "upstream": seconds to wait for the provider's
    # token counter before falling back to the tiktoken estimate + margin, and how
    # many counted requests to remember (see aigw.proxy.upstream_count).
    upstream_count_timeout: float = Field(default=1.0, gt=0, le=30)
    upstream_count_cache_size: int = Field(default=1024, ge=0, le=100_000)

    db_pool_size: int = Field(default=10, ge=1)
    db_timeout: float = Field(default=5.0, gt=0)
    usage_flush_interval: float = Field(default=0.5, gt=0)
    usage_batch_size: int = Field(default=500, ge=1)
    usage_buffer_limit: int = Field(default=100_000, ge=1)
    # Bytes the local usage spool (aigw.usage.spool) may hold on disk; 0 turns it off.
    usage_spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    shutdown_grace: float = Field(default=30.0, ge=0)
    # Seconds /readyz answers 503 after SIGTERM before the listener closes (aigw.drain).
    shutdown_drain: float = Field(default=0.0, ge=0, le=300)
    # Seconds a connection may take to send a request's line and headers (see
    # aigw.httpserver): idle and half-sent heads are closed, not held forever.
    request_head_timeout: float = Field(default=30.0, gt=0)
    # Seconds a connection may go without a byte while the gateway waits on the rest
    # of a request body (after an answer, counted from the answer's end); see
    # aigw.httpserver.
    request_body_timeout: float = Field(default=30.0, gt=0)
    # Seconds an answered connection may stay open, idle, for the client's next
    # request. Longer than the clients' own idle expiry (httpx and the OpenAI SDKs:
    # 5 s; nginx's upstream keepalive_timeout and AWS ALB: 60 s), so that a client
    # never reuses a connection the gateway is closing at the same moment (the
    # request is lost: a reset, not an answer). nginx's own default; see
    # aigw.httpserver.
    keepalive_timeout: float = Field(default=75.0, gt=0)
    # Open client connections per process; 0: half the file-descriptor limit.
    max_connections: int = Field(default=0, ge=0)

    # Budgets and rates (aigw.budgets, docs/budgets.md).
    budget_timezone: str = "UTC"
    budget_output_slice: int = Field(default=256, ge=1, le=1_000_000)
    budget_lease_seconds: float = Field(default=30.0, ge=1.0, le=3600.0)
    budget_store_timeout: float = Field(default=5.0, gt=0, le=60.0)
    # Set: the budget and rate counters live in this Redis, not PostgreSQL
    # (aigw.budgets.redis_store); keys there start with redis_prefix.
    redis_url: SecretStr | None = None
    redis_prefix: str = Field(default="aigw:", min_length=1, max_length=64)

    metrics_token: SecretStr | None = None
    # Distinct key aliases given their own metrics label; later ones share "other".
    metrics_max_aliases: int = Field(default=100, ge=1)
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|text)$")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("budget_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as UTC)") from None
        return value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # An empty AIGW_REDIS_URL (a chart value left blank) means PostgreSQL.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("admin_token", "token_pepper")
    @classmethod
    def _refuse_placeholders(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        if raw.lower() in _PLACEHOLDERS or len(raw) < 16:
            raise ValueError("must be at least 16 characters and not a placeholder")
        return value

    def require_admin_token(self) -> str:
        if self.admin_token is None:
            raise RuntimeError("admin token not resolved; call resolve_generated_secrets()")
        return self.admin_token.get_secret_value()


def _read_or_create(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    """Return the secret stored at *path*, creating it (0600) when absent."""
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    # O_EXCL: two workers starting at once must not overwrite each other's secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip(), False
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value, True


def new_encryption_key_entry() -> str:
    kid = secrets.token_hex(4)
    return f"{kid}:{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()}"


def resolve_generated_secrets(settings: Settings) -> Settings:
    """Fill unset secrets from (or into) the data folder; configured values win."""
    updates: dict[str, SecretStr] = {}
    generators = {
        "admin_token": (ADMIN_TOKEN_FILE, lambda: "aigw-admin-" + secrets.token_urlsafe(32)),
        "encryption_keys": (ENCRYPTION_KEYS_FILE, new_encryption_key_entry),
        "token_pepper": (TOKEN_PEPPER_FILE, lambda: secrets.token_urlsafe(32)),
    }
    for field, (filename, make) in generators.items():
        if getattr(settings, field) is not None:
            continue
        path = settings.data_dir / filename
        value, created = _read_or_create(path, make)
        if created:
            log.warning("generated %s into %s (mode 0600)", field, path)
        updates[field] = SecretStr(value)
    return settings.model_copy(update=updates) if updates else settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return resolve_generated_secrets(Settings())
