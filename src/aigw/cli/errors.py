"""What an admin command can fail with, and the exit code each failure means.

Every failure surfaces as an :class:`AdminError` subclass whose ``exit_code``
is what the CLI exits with, so a script can tell "not found" from "conflict"
from "the gateway is down" without parsing messages:

====  ===========================================================
code  meaning
====  ===========================================================
0     success
1     not found (404)
2     usage or validation error (bad flags, 400/413/415/422)
3     conflict (409 taken / in use / idempotency, 412 stale)
4     authentication (401/403, or no admin token configured)
5     server error, database unavailable, connection failure
====  ===========================================================

Problem documents (RFC 9457) keep their stable ``code``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_CONFLICT = 3
EXIT_AUTH = 4
EXIT_SERVER = 5


class AdminError(Exception):
    """Base of every CLI-visible failure; ``str()`` is safe to print."""

    exit_code = EXIT_SERVER

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.errors = errors or []

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable form ``--json`` prints on stderr."""
        body: dict[str, Any] = {
            "code": self.code,
            "status": self.status,
            "message": self.message,
            "exit_code": self.exit_code,
        }
        if self.errors:
            body["errors"] = self.errors
        return {"error": body}


class NotFoundError(AdminError):
    exit_code = EXIT_NOT_FOUND


class UsageError(AdminError):
    """Bad input: the API refused it as invalid, or the CLI did before sending."""

    exit_code = EXIT_USAGE


class ConflictError(AdminError):
    exit_code = EXIT_CONFLICT


class AuthError(AdminError):
    exit_code = EXIT_AUTH


class ServerError(AdminError):
    exit_code = EXIT_SERVER


class ConnectionFailed(ServerError):
    """The gateway could not be reached, or did not answer in time."""


def _error_class(status: int) -> type[AdminError]:
    if status == 404:
        return NotFoundError
    if status in (401, 403):
        return AuthError
    if status in (409, 412):
        return ConflictError
    if 400 <= status < 500:
        return UsageError
    return ServerError


def error_from_response(response: httpx.Response) -> AdminError:
    """Map a problem+json (or any non-2xx) response onto the error tree."""
    status = response.status_code
    cls = _error_class(status)
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        detail = body.get("detail") or body.get("title") or response.reason_phrase
        errors = body.get("errors") if isinstance(body.get("errors"), list) else None
        return cls(str(detail), code=body["code"], status=status, errors=errors)
    return cls(f"HTTP {status} {response.reason_phrase}", code=f"http_{status}", status=status)
