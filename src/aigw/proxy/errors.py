"""The proxy's errors, under the gateway's one tree (:class:`aigw.errors.AigwError`).

Refusals (:class:`InvalidRequest` and the rest above the upstream errors) are
answered before anything goes upstream; :class:`UpstreamError` and its
subclasses are the failures of an upstream exchange, one class per failure,
which :func:`aigw.proxy.upstream.map_client_error` maps the HTTP client's
errors onto. Anything that escapes to the app's handlers still renders in
OpenAI's envelope under ``/v1``; the pipeline renders them itself to add the
``x-aigw-*`` headers, and after a stream started as :func:`error_event`.

Upstream messages are fixed strings: an upstream URL can carry credentials and
an exception text can carry anything, so neither reaches a client or a log.
"""

from __future__ import annotations

from aigw.errors import AigwError, openai_error_body
from aigw.proxy.policy import INPUT_LIMIT_EXCEEDED, INPUT_NOT_COUNTABLE, OUTPUT_LIMIT_EXCEEDED
from aigw.proxy.sse import encode_data


class InvalidRequest(AigwError):
    status_code = 400
    code = "invalid_request"
    title = "Invalid request"
    openai_type = "invalid_request_error"


class InvalidJson(InvalidRequest):
    code = "invalid_json"
    title = "The request body is not valid JSON"


class AmbiguousField(InvalidRequest):
    code = "ambiguous_field"
    title = "A member name is duplicated or a case variant of a checked field"


class ModelNotAllowed(InvalidRequest):
    code = "model_not_allowed"
    title = "This key may not use the requested model"


class InputTokenLimitExceeded(InvalidRequest):
    code = INPUT_LIMIT_EXCEEDED
    title = "The request's input tokens exceed this key's input limit"


class InputNotCountable(InvalidRequest):
    code = INPUT_NOT_COUNTABLE
    title = "Part of the input cannot be counted against this key's input limit"


class OutputTokenLimitExceeded(InvalidRequest):
    code = OUTPUT_LIMIT_EXCEEDED
    title = "The requested maximum output tokens exceed this key's output limit"


class InvalidApiKey(AigwError):
    status_code = 401
    code = "invalid_api_key"
    title = "Invalid client token: send 'Authorization: Bearer <client token>'"
    openai_type = "invalid_request_error"


class KeyDisabled(AigwError):
    status_code = 403
    code = "key_disabled"
    title = "This AI API key is disabled"
    openai_type = "permission_error"


class KeyUnusable(AigwError):
    status_code = 500
    code = "key_code_unavailable"
    title = "The gateway cannot open this key's upstream secret; check AIGW_ENCRYPTION_KEYS"


class UnsupportedProvider(AigwError):
    status_code = 501
    code = "provider_kind_unsupported"
    title = "This provider kind is not supported by the proxy"


class UpstreamError(AigwError):
    """An upstream exchange failed before it could complete."""

    status_code = 502
    code = "upstream_error"
    title = "The upstream provider failed"
    openai_type = "upstream_error"


class UpstreamConnectError(UpstreamError):
    title = "Could not connect to the upstream provider"


class UpstreamRefusedAddress(UpstreamError):
    title = "The upstream address is not allowed by this gateway's network policy"


class UpstreamConnectionLost(UpstreamError):
    title = "The upstream provider closed the connection"


class UpstreamProtocolError(UpstreamError):
    title = "The upstream provider sent a malformed response"


class UpstreamRedirected(UpstreamError):
    """Redirects are never followed: the target could be any address (a metadata
    service, a host the network policy refuses), chosen by the upstream."""

    title = "The upstream provider answered with a redirect, which this gateway does not follow"


class UpstreamResponseTooLarge(UpstreamProtocolError):
    title = "The upstream response exceeded this gateway's size bound"


class UpstreamEventTooLarge(UpstreamProtocolError):
    title = "An upstream stream event exceeded this gateway's size bound"


class UpstreamAuthFailed(UpstreamError):
    """The upstream refused the gateway's credentials (HTTP 401/403): the key code
    is the administrator's to fix, not the client's token."""

    code = "upstream_auth_failed"
    title = "The upstream provider refused this key's credentials"

    def __init__(self, status: int, provider: str | None = None) -> None:
        self.upstream_status = status
        super().__init__(self.message(status, provider))

    @staticmethod
    def message(status: int, provider: str | None) -> str:
        name = f" '{provider}'" if provider else ""
        return (
            f"The upstream provider{name} refused the gateway's credentials for this key "
            f"(HTTP {status}); an administrator must check the key's key code"
        )


class UpstreamMidStreamError(UpstreamError):
    """An error event in the upstream's stream. Its message reaches the client only
    through :func:`aigw.proxy.upstream.redact_key_code`, which masks the key code
    in it before cutting it to length."""

    def __init__(self, upstream_message: str | None) -> None:
        super().__init__("The upstream provider failed mid-stream")
        self.upstream_message = upstream_message


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status (4xx are passed through, with
    *relayed_headers*)."""

    def __init__(self, status: int, body: bytes, relayed_headers: dict[str, str]) -> None:
        super().__init__(f"The upstream provider answered HTTP {status}")
        self.upstream_status = status
        self.body = body
        self.relayed_headers = relayed_headers
        self.cut = False  # the body was read only in part


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"
    title = "The upstream provider timed out"


class UpstreamConnectTimeout(UpstreamTimeout):
    title = "Timed out connecting to the upstream provider"


class UpstreamFirstByteTimeout(UpstreamTimeout):
    title = "The upstream provider did not start answering in time"


class UpstreamIdleTimeout(UpstreamTimeout):
    title = "The upstream provider stopped sending events"


class UpstreamDeadlineExceeded(UpstreamTimeout):
    title = "The upstream exchange exceeded its total deadline"


class ClientGone(Exception):
    """The downstream client disconnected; stop work for it (nothing to answer)."""


def error_event(code: str, message: str) -> bytes:
    """The final SSE event of a stream that fails after it started."""
    return encode_data(openai_error_body(message, code=code, error_type="upstream_error"))
