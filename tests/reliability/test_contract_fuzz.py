"""Contract fuzzing: schemathesis against the OpenAPI schema a real ``aigw serve``
serves, every operation, with the admin token, a client token and no token.

Cases are generated from a fixed seed (hypothesis ``derandomize``) with a bounded
number per operation and mode, positive (schema-valid) and negative
(schema-invalid), half of the path-parameter cases aimed at resources that exist.
The budget is ``AIGW_FUZZ_EXAMPLES`` cases per operation, mode and credential:
8 in ``make test`` (every operation in both modes under each credential), 100 in
``make fuzz``. Each case is generated once and sent with each credential in turn
(the client token, none, then the admin token, whose writes may delete what the
next case needs): with the seed fixed, a run per credential generated the same
cases three times, and generating them is most of the fuzz's CPU. The
operations are split in two shards, one test each, so pytest-xdist spreads them.
Every response is checked for: no server error, a documented status code, a
documented content type and headers, a body matching the documented schema, and
schema-invalid input refused with a 4xx. The counts are printed and kept in
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_TOKEN
from tests.fakes import FakeUpstream
from tests.reliability.conftest import running_gateway
from tests.support import Gateway

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Per operation, mode and credential; deterministic (derandomize): the same
# budget generates the same cases on every run.
EXAMPLES = int(os.environ.get("AIGW_FUZZ_EXAMPLES", "8"))
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


@pytest.fixture(scope="module")
def fuzzed_gateway(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream
) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("fuzz")
    with running_gateway(database_url, root, AIGW_MAX_BODY_BYTES=str(256 * 1024)) as gateway:
        yield gateway


class Resources:
    """A provider and an enabled key that exist, re-created when a case deletes them."""

    def __init__(self, gateway: Gateway, upstream_url: str) -> None:
        self.admin = httpx.Client(base_url=gateway.url, headers=gateway.admin_headers, timeout=30)
        self.upstream_url = upstream_url
        self.provider_id = ""
        self.key_id = ""
        self.token = ""
        self.ensure()

    def usable(self) -> bool:
        """The key still exists, is enabled, and its token still works (a fuzzed
        POST /apikeys/{id}/token rotates it)."""
        if not self.key_id:
            return False
        key = self.admin.get(f"/apikeys/{self.key_id}")
        if key.status_code != 200 or key.json()["status"] != "enabled":
            return False
        models = self.admin.get("/v1/models", headers={"Authorization": f"Bearer {self.token}"})
        return models.status_code == 200

    def ensure(self) -> None:
        if self.usable():
            return
        suffix = str(time.monotonic_ns())
        provider = self.admin.post(
            "/providers",
            json={
                "name": f"fuzz-{suffix}",
                "base_url": self.upstream_url,
                "models": [{"name": "gpt-4o-mini"}],
            },
        )
        assert provider.status_code == 201, provider.text
        key = self.admin.post(
            "/apikeys",
            json={
                "alias": f"fuzz-{suffix}",
                "provider": f"fuzz-{suffix}",
                "model": "gpt-4o-mini",
                "key_code": "sk-fuzz-" + suffix,
                "status": "enabled",
                "input_limit": 0,
            },
        )
        assert key.status_code == 201, key.text
        self.provider_id = provider.json()["id"]
        self.key_id = key.json()["id"]
        self.token = key.json()["token"]
        # The gateway's key cache hears of the new key by NOTIFY (~0.1 s).
        deadline = time.monotonic() + 10
        while not self.usable():
            assert time.monotonic() < deadline, "the new fuzz key never became usable"
            time.sleep(0.02)

    def path_parameters(self) -> dict[str, str]:
        return {"key_id": self.key_id, "provider_id": self.provider_id}


ROLES = ("system", "developer", "user", "assistant", "tool")


def _usable_chat(case: Any) -> Any:
    body = case.body if isinstance(case.body, dict) else {}
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    fixed = []
    for index, message in enumerate(messages or [{}]):
        message = dict(message) if isinstance(message, dict) else {}
        message["role"] = ROLES[index % len(ROLES)] if index else "user"
        if not isinstance(message.get("content"), str):
            message["content"] = "hello"
        fixed.append(message)
    case.body = {
        **body,
        "model": "gpt-4o-mini",
        "messages": fixed,
        "max_tokens": 8,
        "stream": len(fixed) % 2 == 1,  # half the cases streamed: the SSE events are checked
    }
    for name in ("max_completion_tokens", "stream_options", "n", "tools"):
        case.body.pop(name, None)
    return case


def _operations(schema: Any) -> list[Any]:
    operations = []
    for result in schema.get_all_operations():
        operations.append(result.ok())
    return operations


CREDENTIALS = ("client", "none", "admin")  # admin last: its writes change the resources
SHARDS = 2


def _fuzz(
    strategy: Any,
    label: str,
    base_url: str,
    resources: Resources,
    cases: Counter[str],
    statuses: Counter[tuple[str, str, int]],
    failures: dict[str, list[str]],
) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        generated = {
            name: value
            for name, value in (case.headers or {}).items()
            if name.lower() != "authorization"
        }
        for credential in CREDENTIALS:
            token = {"admin": ADMIN_TOKEN, "client": resources.token, "none": None}[credential]
            headers = dict(generated)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            case.headers = headers
            response = case.call(base_url=base_url, timeout=30)
            cases[credential] += 1
            statuses[(credential, label, response.status_code)] += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as exc:  # collect every violation, keep going
                message = "".join(traceback.format_exception_only(exc)).strip()
                key = f"{credential} {label} -> {response.status_code}"
                failures.setdefault(key, []).append(
                    f"{message[:600]}\n    curl: {case.as_curl_command()[:400]}"
                )
        if case.method in ("DELETE", "PATCH", "POST"):
            resources.ensure()

    # Unsatisfiable: no negative case exists for an operation without parameters.
    with contextlib.suppress(Unsatisfiable):
        run()


@pytest.mark.fuzz  # a minute of fuzzing: `make test` runs it, `make test-fast` does not
@pytest.mark.parametrize("shard", range(SHARDS))
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    fuzzed_gateway: Gateway, fake: FakeUpstream, shard: int
) -> None:
    raw_schema = httpx.get(f"{fuzzed_gateway.url}/openapi.json", timeout=10).json()
    # The credential is ours to choose per call (below): schemathesis must not
    # generate (or negate) Authorization headers from the security schemes.
    for operations in raw_schema["paths"].values():
        for operation in operations.values():
            operation.pop("security", None)
    schema = schemathesis.openapi.from_dict(raw_schema)
    resources = Resources(fuzzed_gateway, fake.url)
    every_operation = _operations(schema)
    assert len(every_operation) == sum(len(ops) for ops in raw_schema["paths"].values())
    operations = every_operation[shard::SHARDS]

    cases: Counter[str] = Counter()
    statuses: Counter[tuple[str, str, int]] = Counter()
    failures: dict[str, list[str]] = {}
    started = time.monotonic()

    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        for mode in MODES:
            strategies = [operation.as_strategy(generation_mode=mode)]
            if "{" in operation.path:
                path_parameters = {
                    name: value
                    for name, value in resources.path_parameters().items()
                    if "{" + name + "}" in operation.path
                }
                strategies.append(
                    operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
                )

            if operation.path == "/v1/chat/completions" and mode is GenerationMode.POSITIVE:
                # Random models and roles are refused (400) before the upstream is
                # reached; aim half the cases at the key's model with valid roles.
                strategies.append(strategies[0].map(_usable_chat))
            _fuzz(
                st.one_of(strategies),
                label,
                fuzzed_gateway.url,
                resources,
                cases,
                statuses,
                failures,
            )

    elapsed = time.monotonic() - started
    print(
        f"\nschemathesis {schemathesis.__version__}: {sum(cases.values())} cases "
        f"({dict(cases)}) over {len(operations)} of {len(every_operation)} operations "
        f"(shard {shard + 1} of {SHARDS}) in {elapsed:.1f} s"
    )
    by_status: dict[str, Counter[int]] = {}
    for (credential, _, status), count in statuses.items():
        by_status.setdefault(credential, Counter())[status] += count
    print(f"statuses: { {c: dict(sorted(v.items())) for c, v in by_status.items()} }")
    for (credential, label, status), count in sorted(statuses.items()):
        if label.split()[1].startswith("/v1"):
            print(f"  {credential:6} {label:28} {status}: {count}")
    for key, messages in sorted(failures.items()):
        print(f"\nFAIL {key} x{len(messages)}\n  {messages[0]}")
    assert not failures, f"{len(failures)} kinds of violation; see the output above"
    # However small the budget, every operation of the shard (every operation over
    # the shards) was called under each credential.
    expected = {f"{op.method.upper()} {op.path}" for op in operations}
    for credential in CREDENTIALS:
        called = {label for who, label, _ in statuses if who == credential}
        assert called == expected, (credential, expected - called)
    assert not any(status >= 500 for _, _, status in statuses)
