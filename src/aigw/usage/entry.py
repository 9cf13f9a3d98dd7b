"""A usage record's shape: :class:`UsageEntry`, what one proxied request hands
the recorder (:mod:`aigw.usage.recorder`), and its row, each value clamped to
its column of ``usage_records`` whatever a hostile upstream or body put in the
entry, in the order of :data:`COLUMNS` (also the order of a spooled row)."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(slots=True)
class UsageEntry:
    """One proxied request's usage; columns of :class:`aigw.usage.models.UsageRecord`."""

    request_id: str
    api_key_id: uuid.UUID
    alias: str
    provider: str
    model: str
    outcome: str
    status_code: int
    input_limit: int
    output_limit: int
    usage_limit: str
    input_tokens: int = 0
    output_tokens: int = 0
    upstream_input_tokens: int | None = None
    upstream_output_tokens: int | None = None
    error_code: str | None = None
    input_limit_exceeded: bool = False
    output_limit_exceeded: bool = False
    stream: bool = False
    budget_exceeded: bool = False
    rate_exceeded: bool = False
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
    endpoint: str = "chat.completions"
    # Which counter decided the input limit: tiktoken, upstream or fallback.
    input_counter: str = "tiktoken"
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_values(self) -> tuple[Any, ...]:
        """The row, in the order of :data:`COLUMNS`, each value clamped to its column
        (whatever a hostile upstream or body put in the entry)."""
        return (
            self.id,
            self.created_at,
            _text(self.request_id, 64) or "-",
            self.api_key_id,
            _text(self.alias, 64),
            _text(self.provider, 64),
            _text(self.model, 128),
            _text(self.outcome, 32),
            _text(self.error_code, 64) if self.error_code is not None else None,
            _int(self.status_code, _INT2_MAX) or 0,
            _int(self.input_tokens) or 0,
            _int(self.output_tokens) or 0,
            _int(self.upstream_input_tokens),
            _int(self.upstream_output_tokens),
            _int(self.input_limit) or 0,
            _int(self.output_limit) or 0,
            _text(self.usage_limit, 16),
            self.input_limit_exceeded is True,
            self.output_limit_exceeded is True,
            self.stream is True,
            _float(self.latency_ms) or 0.0,
            _float(self.ttfb_ms),
            self.budget_exceeded is True,
            self.rate_exceeded is True,
            _text(self.endpoint, 32) or "chat.completions",
            _text(self.input_counter, 16) or "tiktoken",
        )


_INT2_MAX = 2**15 - 1
_INT8_MAX = 2**63 - 1


def _int(value: Any, high: int = _INT8_MAX) -> int | None:
    if type(value) is not int:
        return None
    return min(max(value, 0), high)


def _float(value: Any) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _text(value: Any, length: int) -> str:
    """*value* as PostgreSQL text of at most *length* characters: no NUL, valid UTF-8."""
    if type(value) is str and len(value) <= length and value.isascii() and "\x00" not in value:
        return value  # the usual case, eight times per record
    text = value if type(value) is str else str(value)
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:length].replace("\x00", "")


# (column, PostgreSQL type) of usage_records, in UsageEntry.as_values() order; also the
# order of a spooled row.
COLUMNS = (
    ("id", "uuid"),
    ("created_at", "timestamptz"),
    ("request_id", "text"),
    ("api_key_id", "uuid"),
    ("alias", "text"),
    ("provider", "text"),
    ("model", "text"),
    ("outcome", "text"),
    ("error_code", "text"),
    ("status_code", "int2"),
    ("input_tokens", "int8"),
    ("output_tokens", "int8"),
    ("upstream_input_tokens", "int8"),
    ("upstream_output_tokens", "int8"),
    ("input_limit", "int8"),
    ("output_limit", "int8"),
    ("usage_limit", "text"),
    ("input_limit_exceeded", "bool"),
    ("output_limit_exceeded", "bool"),
    ("stream", "bool"),
    ("latency_ms", "float8"),
    ("ttfb_ms", "float8"),
    ("budget_exceeded", "bool"),
    ("rate_exceeded", "bool"),
    ("endpoint", "text"),
    ("input_counter", "text"),
)
