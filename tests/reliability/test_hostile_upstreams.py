"""Issue 10: hostile clients and upstreams against a real ``aigw serve`` process.

Each test reproduces one attack of the red-team pass and asserts the invariant
that now holds (see docs/reliability.md, "Threat model"). The misbehaving
upstream is :mod:`tests.reliability.hostile_upstream` (raw HTTP/1.1, so it can
send what no HTTP library would).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import asyncpg
import httpx
import openai
import orjson
import pytest

from tests.reliability.conftest import gateway_environment, host_port, running_gateway
from tests.reliability.faults import open_sockets, rss_mib
from tests.reliability.hostile_upstream import IAM_SECRET, HostileUpstream
from tests.support import AIGW_BIN, Gateway, start_gateway

MODEL = "gpt-4o-mini"
# A key code with the characters JSON and URLs escape ('/', '+', '-').
KEY_CODE = "sk-hostile/" + "0123456789abcdef" + "+Zz-9q"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}

# Small bounds, so each attack shows within seconds.
BOUNDS = {
    "AIGW_UPSTREAM_MAX_RESPONSE_BYTES": str(1024 * 1024),
    "AIGW_UPSTREAM_MAX_EVENT_BYTES": str(64 * 1024),
    "AIGW_CLIENT_WRITE_TIMEOUT": "2",
    "AIGW_UPSTREAM_MAX_CONNECTIONS": "4",
    "AIGW_UPSTREAM_FIRST_BYTE_TIMEOUT": "10",
    "AIGW_REQUEST_BODY_TIMEOUT": "2",
    "AIGW_MAX_CONNECTIONS": "40",
    "AIGW_USAGE_FLUSH_INTERVAL": "0.1",
}


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    upstream = HostileUpstream().start()
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture(scope="module")
def gateway(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("hostile")
    with running_gateway(database_url, root, **BOUNDS) as gateway:
        yield gateway


class Keys:
    """One provider (and key) per hostile mode, made on first use."""

    def __init__(self, gateway: Gateway, hostile: HostileUpstream) -> None:
        self.gateway = gateway
        self.hostile = hostile
        self.tokens: dict[tuple[str, str], str] = {}
        self.providers: dict[tuple[str, str], str] = {}

    def token(self, mode: str, kind: str = "openai") -> str:
        if (mode, kind) in self.tokens:
            return self.tokens[(mode, kind)]
        name = f"h-{mode.replace('_', '-')}-{kind}-{uuid.uuid4().hex[:6]}"
        with self.gateway.admin() as admin:
            created = admin.post(
                "/providers",
                json={
                    "name": name,
                    "kind": kind,
                    "base_url": self.hostile.base_url(mode),
                    "models": [{"name": MODEL}],
                },
            )
            assert created.status_code == 201, created.text
            key = admin.post(
                "/apikeys",
                json={
                    "alias": name,
                    "provider": name,
                    "model": MODEL,
                    "key_code": KEY_CODE,
                    "status": "enabled",
                    "input_limit": 0,
                },
            )
            assert key.status_code == 201, key.text
        token = key.json()["token"]
        deadline = time.monotonic() + 10
        while (
            httpx.get(
                f"{self.gateway.url}/v1/models", headers={"Authorization": f"Bearer {token}"}
            ).status_code
            != 200
        ):
            assert time.monotonic() < deadline, "key never reached the key cache"
            time.sleep(0.05)
        self.tokens[(mode, kind)] = token
        self.providers[(mode, kind)] = name
        return token


@pytest.fixture(scope="module")
def keys(gateway: Gateway, hostile: HostileUpstream) -> Keys:
    return Keys(gateway, hostile)


def post(gateway: Gateway, token: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body or BODY)
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=content,
        headers={"Authorization": f"Bearer {token}", "content-type": "application/json"},
        timeout=kwargs.pop("timeout", 30.0),
        **kwargs,
    )


def spellings_hold_key(text: str) -> bool:
    """Whether *text* holds the key code in any spelling a client could decode."""
    forms = {text, unquote(text)}
    with contextlib.suppress(orjson.JSONDecodeError):
        forms.add(orjson.loads(text) if text.startswith('"') else text)
    return any(isinstance(form, str) and KEY_CODE in form for form in forms)


def all_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield name
            yield from all_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from all_strings(item)


async def usage_rows(database_url: str, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT * FROM usage_records WHERE request_id = ANY($1::text[])", request_ids
        )
    finally:
        await conn.close()
    return {row["request_id"]: dict(row) for row in rows}


async def wait_rows(
    database_url: str, request_ids: list[str], timeout: float = 15.0
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = await usage_rows(database_url, request_ids)
        if len(rows) == len(request_ids) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.1)


# --- 5: redirects --------------------------------------------------------------------------


def test_upstream_redirects_are_never_followed(
    gateway: Gateway, keys: Keys, hostile: HostileUpstream
) -> None:
    """Before: the 302 was followed and the fake IAM credentials came back as a 200."""
    for body in (BODY, {**BODY, "stream": True}):
        response = post(gateway, keys.token("redirect"), body)
        assert response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "upstream_error"
        assert IAM_SECRET not in response.text
    assert hostile.hits["iam"] == 0


# --- 8: the key code in any spelling ------------------------------------------------------


def test_no_spelling_of_the_key_code_reaches_the_client(gateway: Gateway, keys: Keys) -> None:
    """Before: a JSON-escaped echo decoded to the full key, an x-ratelimit-* header
    carried it, and a stream error message was cut at 500 characters before redaction."""
    response = post(gateway, keys.token("echo_key"))
    assert response.status_code == 429, response.text
    assert not spellings_hold_key(response.text)
    for text in all_strings(response.json()):
        assert not spellings_hold_key(text), text
    for name, value in response.headers.items():
        assert not spellings_hold_key(value), (name, value)
    # Upstream headers come from an allow-list, with values of their known shape.
    assert "x-echo-authorization" not in response.headers
    assert "x-ratelimit-limit-requests" not in response.headers
    assert response.headers["x-ratelimit-remaining-requests"] == "59"
    assert response.headers["retry-after"] == "1"

    streamed = post(gateway, keys.token("echo_key_stream"), {**BODY, "stream": True})
    assert streamed.status_code == 200
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    error = orjson.loads(events[-1])["error"]
    assert error["message"].startswith("The upstream provider failed mid-stream: xxx")
    # Not even the part a cut at 500 characters would have left.
    assert KEY_CODE[:8] not in streamed.text
    assert not spellings_hold_key(streamed.text)


# --- 10: the upstream refuses the gateway's credentials -----------------------------------


@pytest.mark.parametrize("mode", ["auth401", "auth403"])
def test_upstream_auth_failure_is_not_the_clients_401(
    gateway: Gateway, keys: Keys, mode: str
) -> None:
    """Before: relayed as the client's 401, so the SDK raised AuthenticationError."""
    token = keys.token(mode)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    error = raised.value
    assert not isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError)
    assert error.status_code == 502
    assert error.code == "upstream_auth_failed"
    message = error.response.json()["error"]["message"]
    assert keys.providers[(mode, "openai")] in message
    assert not spellings_hold_key(error.response.text)


# --- 9: bounded upstream bodies and events ------------------------------------------------


def test_an_endless_upstream_body_is_cut_at_its_bound(gateway: Gateway, keys: Keys) -> None:
    """Before: an endless non-stream body grew the gateway from 166 MB to 2.78 GB in 20 s."""
    before = rss_mib(gateway.proc.pid)
    started = time.monotonic()
    response = post(gateway, keys.token("endless_body"), timeout=20.0)
    assert response.status_code == 502, response.text[:300]
    assert response.json()["error"]["code"] == "upstream_error"
    assert time.monotonic() - started < 10
    assert rss_mib(gateway.proc.pid) - before < 100


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"model": MODEL, "input": "hi"}),
        ("/v1/embeddings", {"model": MODEL, "input": "hi"}),
    ],
    ids=["responses", "embeddings"],
)
def test_an_endless_upstream_body_is_cut_at_its_bound_on_every_endpoint(
    gateway: Gateway, keys: Keys, path: str, body: dict[str, Any]
) -> None:
    """The newer endpoints read their upstream answers through the same bound."""
    before = rss_mib(gateway.proc.pid)
    started = time.monotonic()
    response = httpx.post(
        f"{gateway.url}{path}",
        content=orjson.dumps(body),
        headers={
            "Authorization": f"Bearer {keys.token('endless_body')}",
            "content-type": "application/json",
        },
        timeout=20.0,
    )
    assert response.status_code == 502, response.text[:300]
    assert response.json()["error"]["code"] == "upstream_error"
    assert time.monotonic() - started < 10
    assert rss_mib(gateway.proc.pid) - before < 100


def test_an_endless_upstream_event_is_cut_at_its_bound(gateway: Gateway, keys: Keys) -> None:
    """Before: an event that never ended was buffered (and re-scanned) without limit."""
    started = time.monotonic()
    response = post(gateway, keys.token("endless_event"), {**BODY, "stream": True}, timeout=20.0)
    # A final error event after the events before it, or a 502 when none had started.
    if response.status_code == 200:
        last = [line for line in response.text.splitlines() if line.startswith("data: ")][-1]
        assert orjson.loads(last[6:])["error"]["code"] == "upstream_error"
        assert '"Hi"' in response.text
    else:
        assert response.status_code == 502, response.text[:300]
        assert response.json()["error"]["code"] == "upstream_error"
    assert time.monotonic() - started < 10


# --- 7: clients that stop reading ---------------------------------------------------------


def _stalled_stream(gateway: Gateway, token: str) -> socket.socket:
    """A streaming request whose client never reads the answer (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(host_port(gateway.url))
    body = orjson.dumps({**BODY, "stream": True})
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + token.encode() + b"\r\n"
        b"content-length: %d\r\n\r\n" % len(body) + body
    )
    return sock


def test_clients_that_stop_reading_release_their_upstream_connections(
    gateway: Gateway, keys: Keys, hostile: HostileUpstream, database_url: str
) -> None:
    """Before: 4 such streams held a 4-connection upstream pool for 63 s and every
    other request got 504."""
    token = keys.token("firehose")
    ok = keys.token("ok")
    closed_before = hostile.closed
    stalled = [_stalled_stream(gateway, token) for _ in range(4)]
    try:
        deadline = time.monotonic() + 10
        while hostile.open_streams < 4:
            assert time.monotonic() < deadline, "the streams never started"
            time.sleep(0.05)
        started = time.monotonic()
        response = post(gateway, ok, timeout=30.0)
        waited = time.monotonic() - started
        assert response.status_code == 200, response.text
        # The write timeout (2 s) frees the pool; the first-byte bound (10 s) is far.
        assert waited < 8, waited
        deadline = time.monotonic() + 5
        while hostile.closed - closed_before < 4:
            assert time.monotonic() < deadline, hostile.closed - closed_before
            time.sleep(0.05)
    finally:
        for sock in stalled:
            sock.close()


async def test_a_stalled_client_is_recorded_as_disconnected_while_it_holds_on(
    gateway: Gateway, keys: Keys, database_url: str, hostile: HostileUpstream
) -> None:
    """The record is written when the write bound expires, not when (if ever) the
    client closes: before, a client that held its socket open held the exchange."""
    token = keys.token("firehose")
    alias = keys.providers[("firehose", "openai")]
    conn = await asyncpg.connect(database_url)
    since = await conn.fetchval("SELECT now()")
    sock = _stalled_stream(gateway, token)
    try:
        deadline = time.monotonic() + 10
        while True:
            outcomes = await conn.fetch(
                "SELECT outcome, status_code FROM usage_records"
                " WHERE alias = $1 AND created_at >= $2",
                alias,
                since,
            )
            if outcomes or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        sock.close()
        await conn.close()
    assert outcomes, "no record while the stalled client held its socket"
    assert {(row["outcome"], row["status_code"]) for row in outcomes} == {
        ("client_disconnected", 200)
    }


# The same on the other streaming endpoints: /v1/responses, and /v1/messages both
# translated (to an openai provider) and native (to an anthropic provider).
STALLED_ENDPOINTS = {
    "responses": (
        "firehose_responses",
        "openai",
        b"/v1/responses",
        {"model": MODEL, "input": "hi", "stream": True},
    ),
    "messages_translated": (
        "firehose_text",
        "openai",
        b"/v1/messages",
        {"model": MODEL, "max_tokens": 1000000, "messages": BODY["messages"], "stream": True},
    ),
    "messages_native": (
        "firehose_anthropic",
        "anthropic",
        b"/v1/messages",
        {"model": MODEL, "max_tokens": 1000000, "messages": BODY["messages"], "stream": True},
    ),
}


@pytest.mark.parametrize("endpoint", sorted(STALLED_ENDPOINTS))
async def test_a_stream_client_that_never_reads_releases_its_upstream_on_the_write_timeout(
    gateway: Gateway, keys: Keys, database_url: str, hostile: HostileUpstream, endpoint: str
) -> None:
    """A client of ``/v1/responses`` or ``/v1/messages`` that never reads: on the
    write timeout (2 s) the upstream request is closed at once, and the record
    says ``client_disconnected``, while the client still holds its socket."""
    mode, kind, path, body = STALLED_ENDPOINTS[endpoint]
    token = keys.token(mode, kind)
    alias = keys.providers[(mode, kind)]
    # The module's earlier stalled streams share this gateway's 4-connection upstream
    # pool: start once they are all closed, so the bound times this stream alone (on a
    # busy machine one still open held a slot, and its close could count as ours).
    deadline = time.monotonic() + 30
    while hostile.open_streams:
        assert time.monotonic() < deadline, "the earlier tests' streams were never closed"
        await asyncio.sleep(0.05)
    conn = await asyncpg.connect(database_url)
    since = await conn.fetchval("SELECT now()")
    closed_before = hostile.closed
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(host_port(gateway.url))
    raw = orjson.dumps(body)
    sock.sendall(
        b"POST " + path + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer " + token.encode() + b"\r\n"
        b"content-length: %d\r\n\r\n" % len(raw) + raw
    )
    try:
        started = time.monotonic()
        while hostile.closed == closed_before:
            assert time.monotonic() - started < 8, "the upstream stream was never closed"
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 5
        while True:
            outcomes = await conn.fetch(
                "SELECT outcome, status_code, endpoint FROM usage_records"
                " WHERE alias = $1 AND created_at >= $2",
                alias,
                since,
            )
            if outcomes or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        # The client is still connected: it was the write bound that ended the exchange.
        assert sock.fileno() != -1
    finally:
        sock.close()
        await conn.close()
    assert [(row["outcome"], row["status_code"]) for row in outcomes] == [
        ("client_disconnected", 200)
    ], outcomes


# --- 6: idle and half-sent requests; the connection cap -----------------------------------


def test_a_silent_client_after_its_401_is_closed(gateway: Gateway) -> None:
    """Before: head + 1 byte of body, read the 401, one more byte, silence: still
    open after 70 s (uvicorn's keep-alive timer is cancelled by any byte)."""
    sock = socket.create_connection(host_port(gateway.url), timeout=10)
    try:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n{"
        )
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
        sock.sendall(b" ")
        started = time.monotonic()
        sock.settimeout(10)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        closed_after = time.monotonic() - started
    finally:
        sock.close()
    assert closed_after < 5, closed_after  # AIGW_REQUEST_BODY_TIMEOUT=2


def test_a_body_that_stops_arriving_is_dropped(gateway: Gateway, keys: Keys) -> None:
    token = keys.token("ok")
    sock = socket.create_connection(host_port(gateway.url), timeout=10)
    try:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + token.encode() + b"\r\ncontent-length: 1000\r\n\r\n{"
        )
        started = time.monotonic()
        for _ in range(3):  # each byte re-arms the bound; silence ends it
            time.sleep(1)
            sock.sendall(b" ")
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    assert 3 <= elapsed < 8, elapsed
    assert not received.startswith(b"HTTP/1.1 200")


def test_open_connections_are_capped_with_503(gateway: Gateway) -> None:
    """Before: idle connections were held without limit (381 of them exhausted a
    400-descriptor process)."""
    idle = []
    try:
        for _ in range(60):
            idle.append(socket.create_connection(host_port(gateway.url), timeout=5))
        time.sleep(0.5)
        held = open_sockets(gateway.proc.pid)
        refused = 0
        for sock in idle:
            sock.settimeout(0.2)
            try:
                data = sock.recv(4096)
            except (TimeoutError, ConnectionResetError):
                continue
            if data.startswith(b"HTTP/1.1 503"):
                refused += 1
        assert refused >= 20, refused
        assert held < 40 + 30, held  # the cap, plus the upstream pool and the database
    finally:
        for sock in idle:
            sock.close()
    # Everyone else is served again once the idle ones are gone.
    time.sleep(0.5)
    assert httpx.get(f"{gateway.url}/healthz", timeout=5).status_code == 200


# --- 4: one bad record never blocks others; records survive a crash ----------------------


async def test_one_bad_record_never_blocks_the_others(
    gateway: Gateway, keys: Keys, database_url: str
) -> None:
    """Before: a count past int4, or an upstream error whose type is an object, made
    the writer retry that batch forever; no later record was written."""
    ids = []
    for mode in ("huge_usage", "error_type_object", "ok", "ok"):
        response = post(gateway, keys.token(mode))
        assert response.status_code < 500, (mode, response.status_code, response.text)
        ids.append(response.headers["x-aigw-request-id"])
    rows = await wait_rows(database_url, ids)
    assert len(rows) == len(ids), (len(rows), len(ids))
    huge = rows[ids[0]]
    assert huge["upstream_input_tokens"] == 2**40
    assert huge["upstream_output_tokens"] == 2**62
    assert rows[ids[1]]["error_code"] == str({"nested": [1, 2]})[:64]


def _metric(gateway: Gateway, name: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_records_survive_sigkill_and_are_replayed_once(
    database_url: str, tmp_path: Path, hostile: HostileUpstream
) -> None:
    """Before: records buffered when the process died were lost (21 at one shutdown)."""
    env = gateway_environment(
        database_url,
        tmp_path / "data",
        AIGW_USAGE_FLUSH_INTERVAL="120",
        AIGW_USAGE_BATCH_SIZE="1000",
    )
    first = start_gateway(env, tmp_path / "first.log")
    try:
        keys = Keys(first, hostile)
        token = keys.token("ok")
        ids = []
        for _ in range(3):
            response = post(first, token)
            assert response.status_code == 200, response.text
            ids.append(response.headers["x-aigw-request-id"])
        assert await usage_rows(database_url, ids) == {}  # still only buffered
    finally:
        first.proc.kill()
        first.proc.wait(10)
    spool = tmp_path / "data" / "usage-spool"
    assert list(spool.glob("segment-*.jsonl"))
    # A torn line (as a crash mid-write could leave) is kept aside, not retried.
    (spool / "segment-1-1.jsonl").write_bytes(b'["torn\n')

    second = start_gateway(env, tmp_path / "second.log")
    try:
        rows = await wait_rows(database_url, ids)
        assert len(rows) == 3
        deadline = time.monotonic() + 10
        while _metric(second, "aigw_usage_records_rejected_total") < 1:
            assert time.monotonic() < deadline, "the torn line was not counted"
            await asyncio.sleep(0.1)
        assert list(spool.glob("rejected-*.jsonl.held"))
        assert not list(spool.glob("segment-1-1.jsonl"))
    finally:
        second.stop()
    # Replayed once: a third start finds nothing left to write twice.
    third = start_gateway(env, tmp_path / "third.log")
    try:
        await asyncio.sleep(1)
        assert len(await usage_rows(database_url, ids)) == 3
    finally:
        third.stop()


# --- 3: what the upstream receives is exactly what was checked ---------------------------

AMBIGUOUS = {
    "duplicate_model": b'{"model":"gpt-4o-mini","model":"llama3.1:405b","messages":[{"role":"user","content":"hi"}]}',
    "case_variant_model": b'{"model":"gpt-4o-mini","MODEL":"llama3.1:405b","messages":[{"role":"user","content":"hi"}]}',
    "case_variant_max_tokens": b'{"max_tokens":10,"Max_Tokens":100000,"messages":[{"role":"user","content":"hi"}]}',
    "kelvin_sign_max_tokens": '{"max_to\u212aens":100000,"messages":[{"role":"user","content":"hi"}]}'.encode(),
    "duplicate_stream": b'{"stream":false,"stream":true,"messages":[{"role":"user","content":"hi"}]}',
    "case_variant_n": b'{"N":100,"messages":[{"role":"user","content":"hi"}]}',
    "duplicate_content": b'{"messages":[{"role":"user","content":"hi","content":"long text"}]}',
    "case_variant_content": b'{"messages":[{"role":"user","content":"hi","Content":"long text"}]}',
    "case_variant_include_usage": b'{"stream":true,"stream_options":{"include_usage":true,"Include_Usage":false},"messages":[{"role":"user","content":"hi"}]}',
    "duplicate_deep": b'{"messages":[{"role":"user","content":"hi"}],"metadata":{"a":1,"a":2}}',
}


def test_duplicate_and_case_variant_fields_are_refused(
    gateway: Gateway, keys: Keys, hostile: HostileUpstream
) -> None:
    """Before: "MODEL" after the allowed "model", or "Max_Tokens": 100000 after
    "max_tokens": 10, reached upstreams that match names case-insensitively."""
    token = keys.token("ok")
    before = hostile.hits["ok"]
    failures = []
    for name, body in AMBIGUOUS.items():
        response = post(gateway, token, body)
        if response.status_code != 400 or response.json()["error"]["code"] != "ambiguous_field":
            failures.append((name, response.status_code, response.text[:200]))
    assert not failures, failures
    assert hostile.hits["ok"] == before  # nothing went upstream
    # Names that merely look alike in data the gateway does not read still pass.
    schema = {"type": "object", "properties": {"Name": {"type": "string"}, "name": {}}}
    legit = {
        **BODY,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
    }
    assert post(gateway, token, legit).status_code == 200


# --- 11: odd input is a 4xx, never a 5xx --------------------------------------------------

ANTHROPIC_ODD = {
    "tool_calls_object": {"role": "assistant", "content": "x", "tool_calls": {"id": "a"}},
    "tool_call_string": {"role": "assistant", "content": "x", "tool_calls": ["call"]},
    "function_string": {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "a", "type": "function", "function": "f"}],
    },
}


def test_odd_bodies_on_anthropic_keys_are_4xx(
    gateway: Gateway, keys: Keys, hostile: HostileUpstream
) -> None:
    token = keys.token("ok", kind="anthropic")
    before = hostile.hits["ok"]
    failures = []
    for name, message in ANTHROPIC_ODD.items():
        body = {"model": MODEL, "max_tokens": 5, "messages": [message]}
        response = post(gateway, token, body)
        if not 400 <= response.status_code < 500:
            failures.append((name, response.status_code, response.text[:200]))
    assert not failures, failures
    assert hostile.hits["ok"] == before


def test_an_upstream_429_with_a_non_latin1_header_is_relayed_as_429(
    gateway: Gateway, keys: Keys
) -> None:
    response = post(gateway, keys.token("rate_limited_utf8"))
    assert response.status_code == 429, response.text
    assert "retry-after" not in response.headers  # not of a retry-after's shape
    assert response.headers["x-ratelimit-reset-requests"] == "1s"


# --- 13: aigw apply never sends a gateway setting as a key code --------------------------


def test_apply_refuses_gateway_settings_as_key_codes(gateway: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "steal.yaml"
    path.write_text(
        "providers:\n"
        "  - name: steal\n"
        "    base_url: http://127.0.0.1:9/v1\n"
        "    models: [gpt-4o-mini]\n"
        "keys:\n"
        "  - alias: steal\n"
        "    provider: steal\n"
        "    model: gpt-4o-mini\n"
        "    input_limit: 1\n"
        "    key_code_env: AIGW_ADMIN_TOKEN\n"
    )
    env = {**gateway.env, "AIGW_URL": gateway.url}
    result = subprocess.run(
        [str(AIGW_BIN), "apply", "-f", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "AIGW_" in result.stderr
    assert gateway.admin_token not in result.stdout + result.stderr
    with gateway.admin() as admin:
        listed = admin.get("/providers")
        assert listed.status_code == 200 and '"steal"' not in listed.text


# --- 12: a frozen (not dead) database -----------------------------------------------------


def _through(proxy_port: int, database_url: str) -> tuple[str, tuple[str, int] | str]:
    """(the URL of the same database through the forwarder, the forwarder's target)."""
    url = httpx.URL(database_url.replace("postgresql://", "http://", 1))
    socket_dir = url.params.get("host")
    port = url.port or 5432
    target: tuple[str, int] | str = (
        f"{socket_dir}/.s.PGSQL.{port}" if socket_dir else (url.host, port)
    )
    name = url.path.lstrip("/")
    user = url.username or "postgres"
    password = f":{url.password}" if url.password else ""
    return f"postgresql://{user}{password}@127.0.0.1:{proxy_port}/{name}", target


async def test_a_frozen_database_answers_503_within_the_db_timeout(
    database_url: str, tmp_path: Path
) -> None:
    """Before: the admin API hung ~10 s (30 s command timeout) instead of 503."""
    from tests.reliability.tcp_freezer import FreezingProxy

    _, target = _through(0, database_url)
    proxy = FreezingProxy(target)
    url, _ = _through(proxy.port, database_url)
    env = gateway_environment(url, tmp_path / "data", AIGW_DB_TIMEOUT="2")
    gateway = start_gateway(env, tmp_path / "gateway.log")
    try:
        with gateway.admin() as admin:
            assert admin.get("/providers").status_code == 200
            proxy.frozen.set()
            timings = []
            for _ in range(3):
                started = time.monotonic()
                response = admin.get("/providers", timeout=30)
                timings.append(time.monotonic() - started)
                assert response.status_code == 503, response.text
            assert max(timings) < 2 * 2 + 1, timings  # AIGW_DB_TIMEOUT=2, plus slack
            proxy.frozen.clear()
    finally:
        gateway.stop(grace=5)
        proxy.close()
