"""A small typed client for the aigw admin API, for the command line.

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

Problem documents (RFC 9457) keep their stable ``code``; secrets never pass
through here except in request bodies, which are never logged or echoed.
"""

from __future__ import annotations

import ipaddress
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, TypeVar, cast
from urllib.parse import quote, urlsplit

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
ADMIN_TOKEN_ENV = "AIGW_ADMIN_TOKEN"  # noqa: S105 - an environment variable name
PAGE_LIMIT = 200  # the API's maximum page size

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_CONFLICT = 3
EXIT_AUTH = 4
EXIT_SERVER = 5

Status = Literal["enabled", "disabled"]
UsageLimit = Literal["reject", "use_anyway"]
ProviderKind = Literal["openai", "anthropic"]
Encoding = Literal["o200k_base", "cl100k_base"]


# --- what the API returns ----------------------------------------------------


T = TypeVar("T")


class ModelRecord(TypedDict):
    name: str
    encoding: Encoding


class ProviderRecord(TypedDict):
    id: str
    name: str
    kind: ProviderKind
    base_url: str
    models: list[ModelRecord]
    created_at: str
    updated_at: str
    version: int


class ApiKeyRecord(TypedDict):
    id: str
    alias: str
    provider: str
    model: str
    status: Status
    key_code_masked: str
    token_prefix: str
    input_limit: int
    output_limit: int
    usage_limit: UsageLimit
    created_at: str
    updated_at: str
    version: int
    token: NotRequired[str]  # create and rotation only, shown once


class ProviderPage(TypedDict):
    items: list[ProviderRecord]
    next_cursor: str | None
    total: int


class ApiKeyPage(TypedDict):
    items: list[ApiKeyRecord]
    next_cursor: str | None
    total: int


# --- errors -------------------------------------------------------------------


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


# --- configuration ------------------------------------------------------------


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_admin_token(url: str, token_file: Path | None) -> str:
    """The admin token: ``--admin-token-file``, else ``AIGW_ADMIN_TOKEN``, else —
    only for a gateway on this machine — the one ``aigw serve`` generated in the
    data folder. A local token is never sent to a remote URL by accident.
    """
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise UsageError(
                f"cannot read admin token file {token_file}: {exc.strerror}", code="usage"
            ) from None
        if not token:
            raise UsageError(f"admin token file {token_file} is empty", code="usage")
        return token
    token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if token:
        return token
    if _is_loopback(url):
        from aigw.config import ADMIN_TOKEN_FILE, default_data_dir

        data_dir = Path(os.environ.get("AIGW_DATA_DIR") or default_data_dir())
        try:
            token = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
        except OSError:
            token = ""
        if token:
            return token
    raise AuthError(
        f"no admin token: set {ADMIN_TOKEN_ENV} or pass --admin-token-file", code="no_admin_token"
    )


# --- the client ---------------------------------------------------------------


def _body(response: httpx.Response) -> Any:
    """The JSON body of a success response; anything else means --url is not aigw."""
    try:
        return response.json()
    except ValueError:
        raise ServerError(
            f"{response.request.url} answered {response.status_code} without JSON; "
            "is --url an aigw gateway?",
            code="unexpected_response",
            status=response.status_code,
        ) from None


def _clean(params: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in params.items() if value is not None}


def _if_match(version: int | None) -> dict[str, str]:
    return {} if version is None else {"If-Match": f'"{version}"'}


class AdminClient:
    """Synchronous admin API client; use as a context manager.

    Reads (and key creation, which carries an ``Idempotency-Key``) are retried
    when the gateway is unreachable or answers 503; other writes are sent once,
    so a retry can never apply a change twice.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        attempts: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )
        self._attempts = max(1, attempts)

    def __repr__(self) -> str:
        return f"AdminClient(base_url={str(self._http.base_url)!r})"

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = False,
    ) -> httpx.Response:
        attempts = self._attempts if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                response = self._http.request(
                    method, path, params=_clean(params or {}), json=json, headers=headers
                )
            except httpx.TimeoutException:
                if attempt < attempts:
                    time.sleep(0.5 * attempt)
                    continue
                raise ConnectionFailed(
                    f"{self._http.base_url} did not answer in time", code="timeout"
                ) from None
            except httpx.TransportError as exc:
                if attempt < attempts:
                    time.sleep(0.5 * attempt)
                    continue
                raise ConnectionFailed(
                    f"cannot reach the gateway at {self._http.base_url}: {exc or type(exc).__name__}",
                    code="connection_error",
                ) from None
            if response.status_code == 503 and attempt < attempts:
                time.sleep(min(float(response.headers.get("Retry-After", "1") or 1), 5.0))
                continue
            if not response.is_success:
                raise error_from_response(response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    # providers

    def list_providers(
        self,
        *,
        q: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ProviderPage:
        params = {"q": q, "kind": kind, "limit": limit, "cursor": cursor}
        response = self._request("GET", "/providers", params=params, retry=True)
        return cast(ProviderPage, _body(response))

    def iter_providers(
        self, *, q: str | None = None, kind: str | None = None
    ) -> Iterator[ProviderRecord]:
        cursor: str | None = None
        while True:
            page = self.list_providers(q=q, kind=kind, limit=PAGE_LIMIT, cursor=cursor)
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def get_provider(self, provider_id: str) -> ProviderRecord:
        response = self._request("GET", f"/providers/{quote(provider_id, safe='')}", retry=True)
        return cast(ProviderRecord, _body(response))

    def find_provider(self, name: str) -> ProviderRecord | None:
        """The provider named *name* (case-insensitive), or None."""
        wanted = name.lower()
        for provider in self.iter_providers(q=name[:64]):
            if provider["name"].lower() == wanted:
                return provider
        return None

    def create_provider(self, body: Mapping[str, Any]) -> ProviderRecord:
        response = self._request("POST", "/providers", json=dict(body))
        return cast(ProviderRecord, _body(response))

    def update_provider(
        self, provider_id: str, body: Mapping[str, Any], *, version: int | None = None
    ) -> ProviderRecord:
        response = self._request(
            "PATCH",
            f"/providers/{quote(provider_id, safe='')}",
            json=dict(body),
            headers=_if_match(version),
        )
        return cast(ProviderRecord, _body(response))

    def delete_provider(self, provider_id: str, *, version: int | None = None) -> None:
        self._request(
            "DELETE", f"/providers/{quote(provider_id, safe='')}", headers=_if_match(version)
        )

    # AI API keys

    def list_keys(
        self,
        *,
        q: str | None = None,
        status: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        usage_limit: str | None = None,
        sort: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ApiKeyPage:
        params = {
            "q": q,
            "status": status,
            "provider": provider,
            "model": model,
            "usage_limit": usage_limit,
            "sort": sort,
            "limit": limit,
            "cursor": cursor,
        }
        response = self._request("GET", "/apikeys", params=params, retry=True)
        return cast(ApiKeyPage, _body(response))

    def iter_keys(
        self,
        *,
        q: str | None = None,
        status: str | None = None,
        provider: str | None = None,
        model: str | None = None,
        usage_limit: str | None = None,
        sort: str | None = None,
    ) -> Iterator[ApiKeyRecord]:
        cursor: str | None = None
        while True:
            page = self.list_keys(
                q=q,
                status=status,
                provider=provider,
                model=model,
                usage_limit=usage_limit,
                sort=sort,
                limit=PAGE_LIMIT,
                cursor=cursor,
            )
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def get_key(self, key_id: str) -> ApiKeyRecord:
        response = self._request("GET", f"/apikeys/{quote(key_id, safe='')}", retry=True)
        return cast(ApiKeyRecord, _body(response))

    def find_key(self, alias: str) -> ApiKeyRecord | None:
        """The key with this alias (trimmed, case-insensitive), or None."""
        wanted = alias.strip().lower()
        if not wanted:
            return None
        for key in self.iter_keys(q=alias.strip()[:64], sort="alias"):
            if key["alias"].lower() == wanted:
                return key
        return None

    def create_key(
        self, body: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> ApiKeyRecord:
        # A fresh Idempotency-Key per call makes the automatic retry safe.
        headers = {"Idempotency-Key": idempotency_key or f"aigw-cli-{uuid.uuid4()}"}
        response = self._request("POST", "/apikeys", json=dict(body), headers=headers, retry=True)
        return cast(ApiKeyRecord, _body(response))

    def update_key(
        self, key_id: str, body: Mapping[str, Any], *, version: int | None = None
    ) -> ApiKeyRecord:
        response = self._request(
            "PATCH",
            f"/apikeys/{quote(key_id, safe='')}",
            json=dict(body),
            headers=_if_match(version),
        )
        return cast(ApiKeyRecord, _body(response))

    def delete_key(self, key_id: str, *, version: int | None = None) -> None:
        self._request("DELETE", f"/apikeys/{quote(key_id, safe='')}", headers=_if_match(version))

    def rotate_token(self, key_id: str, *, version: int | None = None) -> ApiKeyRecord:
        response = self._request(
            "POST", f"/apikeys/{quote(key_id, safe='')}/token", headers=_if_match(version)
        )
        return cast(ApiKeyRecord, _body(response))


def _as_uuid(value: str) -> str | None:
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        return None


def _resolve(ref: str, get: Callable[[str], T], find: Callable[[str], T | None], what: str) -> T:
    """By id, or by name when *ref* is not an id (or nothing has that id)."""
    as_id = _as_uuid(ref)
    if as_id is not None:
        try:
            return get(as_id)
        except NotFoundError:
            pass
    found = find(ref)
    if found is None:
        raise NotFoundError(f"no {what} {ref!r}", code="not_found", status=404)
    return found


def resolve_key(client: AdminClient, ref: str) -> ApiKeyRecord:
    """A key by id, or by alias."""
    return _resolve(ref, client.get_key, client.find_key, "AI API key with id or alias")


def resolve_provider(client: AdminClient, ref: str) -> ProviderRecord:
    """A provider by id, or by name."""
    return _resolve(ref, client.get_provider, client.find_provider, "provider with id or name")
