"""Errors the proxy answers before (or instead of) an upstream exchange.

They are :class:`aigw.errors.AigwError` subclasses, so anything that escapes to
the app's handlers still renders in OpenAI's envelope under ``/v1``; the proxy
endpoints render them themselves to add the ``x-aigw-*`` headers.
"""

from __future__ import annotations

from aigw.errors import AigwError
from aigw.proxy.policy import INPUT_LIMIT_EXCEEDED, OUTPUT_LIMIT_EXCEEDED


class ProxyError(AigwError):
    status_code = 400
    code = "invalid_request"
    title = "Invalid request"
    openai_type = "invalid_request_error"


class InvalidApiKey(ProxyError):
    status_code = 401
    code = "invalid_api_key"
    title = "Invalid client token: send 'Authorization: Bearer <client token>'"


class KeyDisabled(ProxyError):
    status_code = 403
    code = "key_disabled"
    title = "This AI API key is disabled"
    openai_type = "permission_error"


class ModelNotAllowed(ProxyError):
    code = "model_not_allowed"
    title = "This key may not use the requested model"


class InvalidJson(ProxyError):
    code = "invalid_json"
    title = "The request body is not valid JSON"


class InvalidRequest(ProxyError):
    code = "invalid_request"


class BodyTooLarge(ProxyError):
    status_code = 413
    code = "payload_too_large"
    title = "Request body too large"


class UnsupportedContentType(ProxyError):
    status_code = 415
    code = "unsupported_media_type"
    title = "Content-Type must be application/json"


class InputTokenLimitExceeded(ProxyError):
    code = INPUT_LIMIT_EXCEEDED
    title = "The request's input tokens exceed this key's input limit"


class OutputTokenLimitExceeded(ProxyError):
    code = OUTPUT_LIMIT_EXCEEDED
    title = "The requested maximum output tokens exceed this key's output limit"


class KeyUnusable(ProxyError):
    status_code = 500
    code = "key_code_unavailable"
    title = "The gateway cannot open this key's upstream secret; check AIGW_ENCRYPTION_KEYS"
    openai_type = "server_error"


class UnsupportedProvider(ProxyError):
    status_code = 501
    code = "provider_kind_unsupported"
    title = "This provider kind is not supported by the proxy"
    openai_type = "server_error"
