"""The request's context, readable anywhere below the middleware that sets it.

Kept apart from :mod:`aigw.middleware` so that the audit log and the log
formatter can read the request id without depending on HTTP middleware.
"""

from __future__ import annotations

import contextvars
import secrets

# "-" outside a request (CLI, background tasks): log lines still have a value.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("aigw_request_id", default="-")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def current_request_id() -> str | None:
    """The id of the request being served, or None outside one."""
    request_id = request_id_var.get()
    return None if request_id == "-" else request_id
