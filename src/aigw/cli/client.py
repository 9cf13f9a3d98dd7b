"""A small client for the aigw admin API, for the command line.

It knows HTTP, pagination, ``If-Match`` versions and retries, not which
resources exist: :mod:`aigw.cli.resource` names those. Every failure is an
:class:`~aigw.cli.errors.AdminError` carrying the exit code. Secrets never
pass through here except in request bodies, which are never logged or echoed.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast
from urllib.parse import quote, urlsplit

from aigw.cli.errors import (
    AuthError,
    ConnectionFailed,
    ServerError,
    UsageError,
    error_from_response,
)

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
ADMIN_TOKEN_ENV = "AIGW_ADMIN_TOKEN"  # noqa: S105 - an environment variable name
PAGE_LIMIT = 200  # the API's maximum page size

Record = dict[str, Any]
"""One resource exactly as the API returned it: the JSON form of ``ProviderRead``
(:mod:`aigw.providers.schemas`) or ``ApiKeyRead``/``ApiKeyWithToken``
(:mod:`aigw.apikeys.schemas`). Kept as JSON so ``--json`` prints the API's own shape."""


class Page(TypedDict):
    """One page of a listing (the JSON form of :class:`aigw.schemas.Page`)."""

    items: list[Record]
    next_cursor: str | None
    total: int


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


def item_path(collection: str, item_id: str) -> str:
    """The path of one item of *collection* (e.g. ``/apikeys``); the id is escaped."""
    return f"{collection}/{quote(item_id, safe='')}"


class AdminClient:
    """Synchronous admin API client over resource collections (``/providers``,
    ``/apikeys``); use as a context manager.

    Reads (and creates that carry an ``Idempotency-Key``) are retried when the
    gateway is unreachable or answers 503; other writes are sent once, so a
    retry can never apply a change twice.
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
        # Imported here: `aigw --help` and the server commands never send a request
        # (~0.1 s of CPU, issue 15).
        import httpx

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
        import httpx

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

    def page(self, collection: str, params: Mapping[str, Any]) -> Page:
        """One page of *collection*; ``None`` parameters are left out."""
        response = self._request("GET", collection, params=params, retry=True)
        return cast(Page, _body(response))

    def iterate(self, collection: str, filters: Mapping[str, Any]) -> Iterator[Record]:
        """Every item of *collection* matching *filters*, following the cursor."""
        cursor: str | None = None
        while True:
            page = self.page(collection, {**filters, "limit": PAGE_LIMIT, "cursor": cursor})
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return

    def get(self, collection: str, item_id: str) -> Record:
        response = self._request("GET", item_path(collection, item_id), retry=True)
        return cast(Record, _body(response))

    def read(self, path: str, params: Mapping[str, Any] | None = None) -> Record:
        """GET any document at *path* (e.g. a key's usage); ``None`` parameters are left out."""
        response = self._request("GET", path, params=params, retry=True)
        return cast(Record, _body(response))

    def create(
        self, collection: str, body: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Record:
        """POST a new item; with an *idempotency_key* the request is safe to retry, so it is."""
        headers = {} if idempotency_key is None else {"Idempotency-Key": idempotency_key}
        response = self._request(
            "POST", collection, json=dict(body), headers=headers, retry=idempotency_key is not None
        )
        return cast(Record, _body(response))

    def update(
        self, collection: str, item_id: str, body: Mapping[str, Any], *, version: int | None
    ) -> Record:
        response = self._request(
            "PATCH", item_path(collection, item_id), json=dict(body), headers=_if_match(version)
        )
        return cast(Record, _body(response))

    def delete(self, collection: str, item_id: str, *, version: int | None) -> None:
        self._request("DELETE", item_path(collection, item_id), headers=_if_match(version))

    def post(self, path: str, *, version: int | None) -> Record:
        """POST an action without a body (e.g. token rotation) at *path*."""
        response = self._request("POST", path, headers=_if_match(version))
        return cast(Record, _body(response))
