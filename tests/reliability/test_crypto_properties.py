"""Secrets at rest, through the running system.

* Tampering with any byte of a stored ciphertext, or moving it to another row,
  makes it fail to open; the proxy then refuses that key without calling the
  upstream, and says nothing of the ciphertext or the secret.
* ``aigw rotate-keys`` with a new primary key re-seals every row, survives being
  killed half-way (and two runs at once), while a gateway keeps serving.
* A wrong master key stops ``aigw serve`` with a clear message and a non-zero exit.
* ``base_url`` policy: link-local and cloud metadata refused always (every
  spelling), private and loopback only when the operator allows them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aigw.crypto import CryptoError, DecryptionFailed, KeyRing, key_code_aad
from tests.conftest import ENCRYPTION_KEYS, empty_database, key_body
from tests.fakes import FakeUpstream
from tests.reliability.conftest import (
    assert_problem,
    client_for,
    gateway_environment,
    provider_and_key,
    seed_keys,
)
from tests.support import AIGW_BIN, free_port, stop_process

NEW_KEY = "k2:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
OLD_RING = KeyRing.parse(ENCRYPTION_KEYS)
BOTH_RING = KeyRing.parse(f"{NEW_KEY},{ENCRYPTION_KEYS}")
KEY_MATERIAL = re.compile(r"[A-Za-z0-9_-]{40,}={0,2}")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# --- tampering ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
async def _no_rows_under_another_ring(database_url: str) -> AsyncIterator[None]:
    """Empty the tables after each test here: a test that re-seals rows under
    NEW_KEY left them to the next test of its xdist worker, and an ``aigw serve``
    started on them with the suite's ring refuses to start (exit 2). The worker's
    shared gateway (tests/conftest.py) does not empty the tables before it starts:
    started after test_rotation_reseals_stored_idempotent_responses, it failed
    three times and every later test taking it errored (18 errors)."""
    yield
    await empty_database(database_url)


SEALED_ID = uuid.uuid4()
SEALED = OLD_RING.encrypt("sk-tamper-target-0123456789", key_code_aad(SEALED_ID))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
def test_any_flipped_bit_of_the_sealed_bytes_fails(position: int, mask: int) -> None:
    version, kid, body = KeyRing.parse_header(SEALED)
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[position % len(raw)] ^= mask
    tampered = f"{version}.{kid}.{_b64(bytes(raw))}"
    with pytest.raises(DecryptionFailed):
        OLD_RING.decrypt(tampered, key_code_aad(SEALED_ID))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_edit_of_the_stored_text_fails(data: st.DataObject) -> None:
    """Any single-character substitution, deletion or insertion in the stored text."""
    index = data.draw(st.integers(0, len(SEALED) - 1))
    char = data.draw(st.characters(codec="ascii", exclude_characters=SEALED[index]))
    edit = data.draw(st.sampled_from(["substitute", "delete", "insert"]))
    tampered = {
        "substitute": SEALED[:index] + char + SEALED[index + 1 :],
        "delete": SEALED[:index] + SEALED[index + 1 :],
        "insert": SEALED[:index] + char + SEALED[index:],
    }[edit]
    with pytest.raises(CryptoError):
        OLD_RING.decrypt(tampered, key_code_aad(SEALED_ID))


@settings(max_examples=100, deadline=None)
@given(other=st.uuids())
def test_a_ciphertext_opens_for_its_own_row_only(other: uuid.UUID) -> None:
    with pytest.raises(DecryptionFailed):
        OLD_RING.decrypt(SEALED, key_code_aad(other))
    assert OLD_RING.decrypt(SEALED, key_code_aad(SEALED_ID)) == "sk-tamper-target-0123456789"


async def test_tampered_or_moved_ciphertexts_are_refused_by_the_proxy(
    inproc: Any, fresh_fake: FakeUpstream, db: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = await inproc()
    _, victim = await provider_and_key(app, fresh_fake.url, key_code="sk-victim-secret-000001")
    _, thief = await provider_and_key(app, fresh_fake.url, key_code="sk-thief-secret-0000002")
    conn = await asyncpg.connect(db)
    try:
        stolen = await conn.fetchval(
            "SELECT key_code_ciphertext FROM api_keys WHERE id = $1", uuid.UUID(victim["id"])
        )
        # The thief's row gets the victim's ciphertext; the victim's gets one byte flipped.
        await conn.execute(
            "UPDATE api_keys SET key_code_ciphertext = $1 WHERE id = $2",
            stolen,
            uuid.UUID(thief["id"]),
        )
        flipped = stolen[:-3] + ("A" if stolen[-3] != "A" else "B") + stolen[-2:]
        await conn.execute(
            "UPDATE api_keys SET key_code_ciphertext = $1 WHERE id = $2",
            flipped,
            uuid.UUID(victim["id"]),
        )
    finally:
        await conn.close()
    # Wait for the key cache to see both rows change (NOTIFY), then use both tokens.
    for key in (thief, victim):
        token_hash = app.state.hasher.hash(key["token"])
        deadline = time.monotonic() + 5
        while app.state.keys.get(token_hash).key_code is not None:
            assert time.monotonic() < deadline, "key cache never reloaded the row"
            await asyncio.sleep(0.02)
    for key in (thief, victim):
        async with client_for(app, key["token"]) as http:
            response = await http.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
            )
        error = response.json()["error"]
        assert error["code"] == "key_code_unavailable", response.text
        assert "sk-victim" not in response.text and stolen[5:20] not in response.text
    # Nothing went upstream: not the victim's secret under the thief's key, nothing.
    assert fresh_fake.stats()["chat_requests"] == 0
    logged = caplog.text
    assert "sk-victim-secret" not in logged and "sk-thief-secret" not in logged
    assert stolen[5:40] not in logged


# --- rotation -------------------------------------------------------------------------------


def _cli_env(db: str, tmp_path: Path, keys: str) -> dict[str, str]:
    env = {**os.environ, **gateway_environment(db, tmp_path / "cli-data")}
    env["AIGW_ENCRYPTION_KEYS"] = keys
    return env


async def _kid_counts(db: str) -> dict[str, int]:
    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch(
            "SELECT split_part(key_code_ciphertext, '.', 2) AS kid, count(*) AS n"
            " FROM api_keys GROUP BY 1"
        )
    finally:
        await conn.close()
    return {row["kid"]: row["n"] for row in rows}


async def _all_open(db: str, ring: KeyRing, codes: dict[uuid.UUID, str]) -> None:
    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch("SELECT id, key_code_ciphertext FROM api_keys")
    finally:
        await conn.close()
    assert len(rows) == len(codes)
    for row in rows:
        assert ring.decrypt(row["key_code_ciphertext"], key_code_aad(row["id"])) == codes[row["id"]]


@pytest.mark.slow
async def test_rotation_killed_half_way_resumes_and_gateways_keep_serving(
    client: Any,
    provider: dict[str, Any],
    db: str,
    tmp_path: Path,
    inproc: Any,
    fresh_fake: FakeUpstream,
) -> None:
    # 1,000 rows: the kill lands after ~36 batches of 7 with ~750 rows left, so the
    # resumed pair still shares 15 batches of 50 (4,000 rows proved nothing more and
    # spent ~12 s re-sealing and reading them).
    total = 1000
    codes = await seed_keys(db, provider["id"], total)
    # A gateway with the new ring serving a key throughout (old and new kids open).
    app = await inproc(encryption_keys=f"{NEW_KEY},{ENCRYPTION_KEYS}")
    _, served = await provider_and_key(app, fresh_fake.url, key_code="sk-served-during-rotation")
    codes[uuid.UUID(served["id"])] = "sk-served-during-rotation"
    env = _cli_env(db, tmp_path, f"{NEW_KEY},{ENCRYPTION_KEYS}")
    proc = subprocess.Popen(
        [str(AIGW_BIN), "rotate-keys", "--batch-size", "7"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = await _kid_counts(db)
            if counts.get("k2", 0) >= total // 4:
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_process(proc)
    half = await _kid_counts(db)
    print(f"\nrotation killed at {half}")
    assert 0 < half.get("k2", 0) < total + 1 and half.get("k1", 0) > 0, half
    await _all_open(db, BOTH_RING, codes)
    async with client_for(app, served["token"]) as http:
        chat = {"messages": [{"role": "user", "content": "during"}]}
        assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200

    # Two runs at once finish the job between them (rows are taken SKIP LOCKED).
    runs = [
        subprocess.Popen(
            [str(AIGW_BIN), "rotate-keys", "--batch-size", "50"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    done = [int(re.search(r"re-encrypted (\d+)", out).group(1)) for out in outputs]  # type: ignore[union-attr]
    assert sum(done) == half.get("k1", 0), (done, half)
    assert await _kid_counts(db) == {"k2": total + 1}
    await _all_open(db, KeyRing.parse(NEW_KEY), codes)
    assert fresh_fake.stats()["chat_requests"] >= 1
    # After rotation the old key can be dropped: the new key alone opens everything...
    # (The two processes only read the rows, so they run side by side.)
    gone_run = asyncio.to_thread(
        subprocess.run,
        [str(AIGW_BIN), "rotate-keys"],
        env=_cli_env(db, tmp_path, NEW_KEY),
        capture_output=True,
        text=True,
        timeout=60,
    )
    gone, result = await asyncio.gather(
        gone_run, asyncio.to_thread(_serve_once, db, tmp_path, ENCRYPTION_KEYS)
    )
    assert gone.returncode == 0 and "0 left" in gone.stderr, gone.stderr
    # ...and the old key alone no longer does: start-up refuses it.
    assert result.returncode != 0
    assert "AIGW_ENCRYPTION_KEYS cannot open stored key codes" in result.stdout + result.stderr


# --- the master key at start-up -------------------------------------------------------------


def _serve_once(
    db: str, tmp_path: Path, keys: str, workers: int = 1
) -> subprocess.CompletedProcess[str]:
    env = _cli_env(db, tmp_path, keys)
    return subprocess.run(
        [str(AIGW_BIN), "serve", "--port", str(free_port()), "--workers", str(workers)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


WRONG_KEYS = {
    "same_kid_other_key": "k1:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    "other_kid": "zz:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    "new_key_first_old_missing": NEW_KEY,
}


@pytest.mark.parametrize("case", list(WRONG_KEYS))
async def test_wrong_master_key_stops_serve_with_a_clear_error(
    case: str, client: Any, provider: dict[str, Any], db: str, tmp_path: Path
) -> None:
    assert (await client.post("/apikeys", json=key_body())).status_code == 201
    started = time.monotonic()
    result = _serve_once(db, tmp_path, WRONG_KEYS[case], workers=2 if case == "other_kid" else 1)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "AIGW_ENCRYPTION_KEYS cannot open stored key codes" in output, output[-2000:]
    key = WRONG_KEYS[case].split(":", 1)[1]
    assert key not in output and key[:16] not in output
    assert "Traceback" not in output, output[-3000:]
    print(f"\n{case}: exit {result.returncode} after {elapsed:.1f} s")


MALFORMED = {
    "not_base64": "k1:!!!not-base64!!!",
    "short_key": "k1:" + base64.urlsafe_b64encode(secrets.token_bytes(16)).decode(),
    "no_kid": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    "bad_kid": "k 1:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    "duplicate_kid": f"{ENCRYPTION_KEYS},{ENCRYPTION_KEYS}",
    "empty_list": ",",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_key_ring_stops_serve_without_echoing_it(
    case: str, db: str, tmp_path: Path
) -> None:
    result = _serve_once(db, tmp_path, MALFORMED[case])
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "invalid AIGW_ENCRYPTION_KEYS" in output, output[-2000:]
    assert "Traceback" not in output and "╭" not in output, output[-2000:]
    secret_part = MALFORMED[case].rsplit(":", 1)[-1]
    if len(secret_part) > 12:
        assert secret_part not in output, output[-2000:]


# --- base_url policy --------------------------------------------------------------------------

ALWAYS_REFUSED = [
    "http://169.254.169.254/latest/meta-data",
    "http://169.254.169.254./",
    "http://169.254.170.2/v2/credentials",
    "http://100.100.100.200/",
    "http://metadata.google.internal/computeMetadata/v1",
    "http://METADATA.GOOGLE.INTERNAL./",
    "http://metadata/",
    "http://instance-data/",
    "http://2852039166/",  # decimal
    "http://0xa9fea9fe/",  # hex
    "http://0xa9.0xfe.0xa9.0xfe/",
    "http://0251.0376.0251.0376/",  # octal
    "http://169.254.43518/",  # a.b.c form
    "http://169.16689662/",  # a.b form
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[fd00:ec2::254]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://169.254.1.1/",
    "http://[2002:a9fe:a9fe::]/",  # 6to4 around 169.254.169.254
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
]
PRIVATE = [
    "http://127.0.0.1:8000/v1",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://localhost:11434/v1",
    "http://LOCALHOST./",
    "http://vllm.localhost/",
    "http://[::1]:8000/v1",
    "http://[::ffff:127.0.0.1]/",
    "http://10.0.0.5/v1",
    "http://172.16.0.1/",
    "http://192.168.1.10/",
    "http://100.64.0.1/",
    "http://[fc00::1]/",
    "http://[::ffff:10.0.0.1]/",
]
PUBLIC = ["https://api.openai.com/v1", "http://8.8.8.8/v1", "https://[2606:4700::1111]/v1"]


@pytest.mark.parametrize("allow_private", [True, False])
async def test_base_url_policy(allow_private: bool, inproc: Any) -> None:
    app = await inproc(allow_private_upstreams=allow_private)
    seen: dict[str, int] = {}
    for index, url in enumerate(ALWAYS_REFUSED + PRIVATE + PUBLIC):
        body = {"name": f"p{index}", "base_url": url, "models": [{"name": "m"}]}
        response = await app.admin.post("/providers", json=body)
        seen[url] = response.status_code
        expected_ok = url in PUBLIC or (url in PRIVATE and allow_private)
        if expected_ok:
            assert response.status_code == 201, (url, response.text)
            # The same address is refused on update when the policy refuses it.
            provider_id = response.json()["id"]
            patched = await app.admin.patch(
                f"/providers/{provider_id}", json={"base_url": ALWAYS_REFUSED[index % 5]}
            )
            assert assert_problem(patched, 422)["code"] == "upstream_not_allowed"
        else:
            problem = assert_problem(response, 422)
            assert problem["code"] == "upstream_not_allowed", (url, problem)
    refused = sorted(url for url, status in seen.items() if status != 201)
    print(f"\nallow_private={allow_private}: {len(refused)} refused of {len(seen)}")


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
    ],
)
async def test_private_policy_applies_to_the_proxy_not_just_to_writes(
    host: str, inproc: Any, fresh_fake: FakeUpstream
) -> None:
    """A provider stored while private upstreams were allowed (or by another gateway,
    or by SQL) is not called by a gateway that forbids them: the policy is checked
    again when the proxy connects (which also stops DNS rebinding)."""
    permissive = await inproc(allow_private_upstreams=True)
    url = fresh_fake.url.replace("127.0.0.1", host)
    _, key = await provider_and_key(permissive, url)
    strict = await inproc(allow_private_upstreams=False)
    token_hash = strict.state.hasher.hash(key["token"])
    for _ in range(100):
        if strict.state.keys.get(token_hash) is not None:
            break
        await asyncio.sleep(0.02)
    async with client_for(strict, key["token"]) as http:
        response = await http.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
        )
    assert response.status_code == 502, response.text
    assert "network policy" in response.json()["error"]["message"]
    assert fresh_fake.stats()["chat_requests"] == 0


async def test_rotation_reseals_stored_idempotent_responses(
    inproc: Any, fresh_fake: FakeUpstream, db: str, tmp_path: Path
) -> None:
    """An Idempotency-Key's stored response (it holds the client token) is sealed by
    the key ring too: after rotate-keys and dropping the old key, a retry within the
    24 h window still replays it."""
    app = await inproc()
    provider = await app.admin.post(
        "/providers",
        json={"name": "idem-rot", "base_url": fresh_fake.url, "models": [{"name": "gpt-4o-mini"}]},
    )
    assert provider.status_code == 201
    body = {
        "alias": "idem-rotated",
        "provider": "idem-rot",
        "model": "gpt-4o-mini",
        "key_code": "sk-idem-rotation",
        "input_limit": 0,
    }
    headers = {"Idempotency-Key": "rotation-" + uuid.uuid4().hex}
    first = await app.admin.post("/apikeys", json=body, headers=headers)
    assert first.status_code == 201
    rotated = subprocess.run(
        [str(AIGW_BIN), "rotate-keys"],
        env=_cli_env(db, tmp_path, f"{NEW_KEY},{ENCRYPTION_KEYS}"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rotated.returncode == 0, rotated.stderr
    new_only = await inproc(encryption_keys=NEW_KEY)
    again = await new_only.admin.post("/apikeys", json=body, headers=headers)
    assert again.status_code == 201, again.text
    assert again.json()["token"] == first.json()["token"]
