"""A scriptable fake OpenAI-compatible upstream, run as a real server process.

Run it (from the repository root)::

    python -m tests.fakes.upstream --port 8081 [--host 127.0.0.1]
        [--scenario '{"tokens": 50}'] [--models gpt-4o-mini,gpt-4o] [--require-key KEY]

``--port 0`` picks a free port. Once listening it prints one line on stdout,
``FAKE_UPSTREAM_READY http://HOST:PORT/v1``; it logs nothing else there. It
stops on SIGTERM/SIGINT. From tests, use :func:`tests.fakes.start_fake_upstream`.

Routes
------
``POST /v1/chat/completions`` (stream and not), ``GET /v1/models``, and for
tests: ``GET|POST /_control/scenario`` (read / replace the default scenario),
``GET /_control/stats``, ``GET /_control/requests`` (the last 100 requests),
``POST /_control/reset`` (zero the stats, forget requests, restore the
``--scenario`` default).

Output
------
Deterministic: ``tokens`` words of "The quick brown fox ..." (each word one
token in cl100k_base and o200k_base, and the text exactly ``tokens`` tokens),
one token per SSE event (``chunk_tokens`` to group), capped at the request's
``max_completion_tokens``/``max_tokens`` (``finish_reason: "length"``). Usage
follows the fake's own rules in :mod:`tests.fakes.billing` (tiktoken and
OpenAI's cookbook formula, nothing from aigw): ``prompt_tokens`` by the
cookbook's per-message formula (encoding from tiktoken's model table, or the
``encoding`` knob), ``completion_tokens`` the tokens generated (content plus
each tool call's arguments, and reasoning). One choice, whatever ``n``, unless
``honour_n``: then ``n`` choices, each generated (and capped) on its own and
billed together, streamed interleaved (or one after another with
``sequential_choices``). ``reasoning_tokens`` words of reasoning come before the
answer, as DeepSeek/vLLM (``reasoning_content``) or OpenRouter (``reasoning``,
the ``reasoning_field`` knob) send them; ``refusal`` answers with a refusal
instead of content.

Scenarios
---------
A scenario is a JSON object of the knobs of :class:`Scenario`. Per request it
is merged from, lowest precedence first: the default (``--scenario`` or
``POST /_control/scenario``); ``metadata.fake_scenario`` in the body (a JSON
string or an object); a suffix of the model name, ``model#{json}`` or
``model#k=v,k=v`` (values parsed as JSON where they parse, so
``gpt-4o-mini#tokens=5,status=429``); a first line ``#scenario {json}`` in the
last user message (the rest of the message is the prompt, e.g. for ``echo``);
and the ``x-fake-scenario`` header (JSON). The model-name and message forms
survive a gateway that forwards neither client headers nor unknown fields.
Unknown knobs are refused with 400, so typos fail loudly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
import socket
import struct
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson
from aiohttp import web
from tiktoken import Encoding

from tests.fakes.billing import encoding_for_model, load_encoding, prompt_tokens, token_pieces

READY_PREFIX = "FAKE_UPSTREAM_READY "
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4", "gpt-3.5-turbo")
SCENARIO_HEADER = "x-fake-scenario"
SCENARIO_DIRECTIVE = "#scenario"
ENCODINGS = ("cl100k_base", "o200k_base")

# "The" then the cycle: every word is one token in both encodings and no two
# merge, so n words are exactly n tokens (checked by the fake's tests).
_FIRST_WORD = "The"
_WORDS = (
    " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog",
    " and", " then", " runs", " back", " home", " again", " with", " a",
)  # fmt: skip


def words(n: int) -> Iterator[str]:
    """The first *n* words (tokens) of the deterministic output."""
    for i in range(n):
        yield _FIRST_WORD if i == 0 else _WORDS[(i - 1) % len(_WORDS)]


@dataclass(slots=True)
class Scenario:
    """How the fake answers. Every knob is optional; defaults answer normally.

    ``k`` counts output events: the SSE events after the first (role) event
    that carry generated text, ``chunk_tokens`` tokens each.
    """

    tokens: int = 16  # output tokens to generate (content, or per tool call)
    content: str | None = None  # a fixed content instead of generated words
    echo: bool = False  # content = the last user message (minus a #scenario line)
    chunk_tokens: int = 1  # tokens per SSE event
    delay_first_byte: float = 0.0  # seconds before the status line
    delay_per_chunk: float = 0.0  # seconds before each output event
    stall_after: int | None = None  # after k output events, send nothing more...
    stall_seconds: float | None = None  # ...for this long (None: until the client leaves)
    keepalive_comments: float | None = None  # while stalled, ": keep-alive" every x s
    reset_after: int | None = None  # after k output events, abort the TCP connection (RST)
    malformed_after: int | None = None  # after k output events, a data line that is not JSON
    status: int | None = None  # answer this HTTP status with an OpenAI error body
    retry_after: str | None = None  # Retry-After header on an error (default "1" for 429)
    error_message: str | None = None
    error_type: str | None = None
    error_code: str | None = None
    ignore_max_tokens: bool = False  # generate `tokens` whatever the request's max
    tool_calls: int | list[dict[str, str]] = 0  # n generated calls, or [{name, arguments}]
    usage: bool | None = None  # None: as OpenAI (stream: if include_usage); True/False: force
    finish_reason: str | None = None  # override the final finish_reason
    encoding: str | None = None  # count with this encoding instead of the model's
    reasoning_tokens: int = 0  # words of reasoning before the answer
    reasoning_field: str = "reasoning_content"  # or "reasoning" (OpenRouter)
    refusal: str | None = None  # refuse with this text instead of answering
    honour_n: bool = False  # answer the request's n choices (default: one)
    sequential_choices: bool = False  # stream choice 0 entirely, then choice 1, ...

    @classmethod
    def merged(cls, *layers: Mapping[str, Any]) -> Scenario:
        """A scenario from *layers*, later ones overriding earlier ones.
        Raises ``ValueError`` on an unknown knob or a value of the wrong type."""
        values: dict[str, Any] = {}
        for layer in layers:
            values.update(layer)
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown scenario knobs: {', '.join(sorted(unknown))}")
        scenario = cls(**values)
        scenario._check()
        return scenario

    def _check(self) -> None:
        def number(value: object) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool)

        if self.reasoning_field not in ("reasoning_content", "reasoning"):
            raise ValueError("reasoning_field must be reasoning_content or reasoning")
        for name in ("tokens", "chunk_tokens", "reasoning_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer")
        for name in ("stall_after", "reset_after", "malformed_after", "status"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name} must be an integer")
        for name in ("delay_first_byte", "delay_per_chunk"):
            if not number(getattr(self, name)):
                raise ValueError(f"{name} must be a number of seconds")
        for name in ("stall_seconds", "keepalive_comments"):
            value = getattr(self, name)
            if value is not None and not number(value):
                raise ValueError(f"{name} must be a number of seconds")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")
        if self.chunk_tokens == 0:
            raise ValueError("chunk_tokens must be at least 1")
        if self.retry_after is not None:
            self.retry_after = str(self.retry_after)
        calls = self.tool_calls
        if isinstance(calls, bool) or not isinstance(calls, int | list):
            raise ValueError("tool_calls must be a count or a list of {name, arguments}")
        if isinstance(calls, list) and not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls
        ):
            raise ValueError("tool_calls entries need a string name")


def _parse_suffix(suffix: str) -> dict[str, Any]:
    """``{json}`` or ``k=v,k=v`` (values parsed as JSON where they parse)."""
    suffix = suffix.strip()
    if suffix.startswith("{"):
        value = orjson.loads(suffix)
        if not isinstance(value, dict):
            raise ValueError("scenario must be a JSON object")
        return value
    knobs: dict[str, Any] = {}
    for item in filter(None, suffix.split(",")):
        key, _, raw = item.partition("=")
        try:
            knobs[key.strip()] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            knobs[key.strip()] = raw
    return knobs


def _json_object(value: object, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as error:
            raise ValueError(f"{where}: not JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: a scenario is a JSON object")
    return value


def _last_user_message(body: Mapping[str, Any]) -> dict[str, Any] | None:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return message
    return None


def _message_text(message: Mapping[str, Any] | None) -> str:
    if message is None:
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _split_directive(text: str) -> tuple[dict[str, Any] | None, str]:
    """(scenario, rest) for a message starting with ``#scenario {json}``."""
    if not text.startswith(SCENARIO_DIRECTIVE):
        return None, text
    line, _, rest = text.partition("\n")
    return _json_object(line[len(SCENARIO_DIRECTIVE) :].strip(), "#scenario line"), rest


@dataclass(slots=True)
class Stats:
    requests: int = 0  # every request to /v1/*
    chat_requests: int = 0
    in_flight: int = 0  # chat requests being answered now
    streams_open: int = 0  # streaming responses under way now
    completed: int = 0  # chat responses sent in full
    client_disconnects: int = 0  # chat requests whose client went away before the end
    resets: int = 0  # connections aborted by a reset_after scenario
    errors: int = 0  # status scenarios answered


@dataclass(slots=True)
class FakeState:
    encodings: Mapping[str, Encoding]
    models: tuple[str, ...]
    base_scenario: dict[str, Any]
    require_key: str | None = None
    scenario: dict[str, Any] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=100))
    runner: web.AppRunner | None = None

    def reset(self) -> None:
        """Zero the counters (in place: replies under way hold this object),
        keep the live gauges, forget requests, restore the default scenario."""
        self.scenario = dict(self.base_scenario)
        for counter in fields(Stats):
            if counter.name not in ("in_flight", "streams_open"):
                setattr(self.stats, counter.name, 0)
        self.requests.clear()


STATE: web.AppKey[FakeState] = web.AppKey("state", FakeState)


def _error_body(status: int, scenario: Scenario | None = None) -> dict[str, Any]:
    defaults = {
        400: ("Invalid request (fake upstream).", "invalid_request_error", None),
        401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
        403: ("You are not allowed to do this.", "invalid_request_error", None),
        404: ("The model does not exist.", "invalid_request_error", "model_not_found"),
        429: ("Rate limit reached (fake upstream).", "requests", "rate_limit_exceeded"),
    }
    message, kind, code = defaults.get(
        status, ("The server had an error (fake upstream).", "server_error", None)
    )
    if scenario is not None:
        message = scenario.error_message or message
        kind = scenario.error_type or kind
        code = scenario.error_code or code
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _json(
    data: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _bad_request(message: str) -> web.Response:
    body = _error_body(400)
    body["error"]["message"] = message
    return _json(body, 400)


class _Plan:
    """The output of one response: content pieces or tool calls, generated a
    token at a time and capped at the request's max tokens (see
    :mod:`tests.fakes.billing`)."""

    def __init__(
        self, scenario: Scenario, body: Mapping[str, Any], prompt: str, encoding: Encoding
    ) -> None:
        self.budget: int | None = None
        if not scenario.ignore_max_tokens:
            given = [
                value
                for value in (body.get("max_completion_tokens"), body.get("max_tokens"))
                if isinstance(value, int) and not isinstance(value, bool)
            ]
            self.budget = min(given) if given else None
        self.generated = 0  # tokens generated: completion_tokens
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.calls: list[dict[str, Any]] = []  # {id, name, arguments: [pieces]}
        self.truncated = False
        if scenario.reasoning_tokens:
            self.reasoning = self._take([(word, 1) for word in words(scenario.reasoning_tokens)])
        if self.truncated:
            return
        if scenario.refusal is not None:
            self.refusal = self._take(list(token_pieces(encoding, scenario.refusal)))
        elif scenario.tool_calls:
            self._plan_calls(scenario, encoding)
        else:
            if scenario.echo:
                pieces = list(token_pieces(encoding, prompt))
            elif scenario.content is not None:
                pieces = list(token_pieces(encoding, scenario.content))
            else:
                pieces = [(word, 1) for word in words(scenario.tokens)]
            self.content = self._take(pieces)

    def _plan_calls(self, scenario: Scenario, encoding: Encoding) -> None:
        specs = scenario.tool_calls
        if isinstance(specs, int):
            specs = [
                {
                    "name": f"fake_tool_{i}",
                    "arguments": '{"text": "' + "".join(words(scenario.tokens)) + '"}',
                }
                for i in range(specs)
            ]
        for i, spec in enumerate(specs):
            if self.truncated:
                break
            arguments = str(spec.get("arguments", "{}"))
            pieces = self._take(list(token_pieces(encoding, arguments)))
            self.calls.append({"id": f"call_fake_{i}", "name": spec["name"], "arguments": pieces})

    def _take(self, pieces: list[tuple[str, int]]) -> list[str]:
        """The pieces that fit in what is left of the budget, in order."""
        taken = []
        for piece, tokens in pieces:
            if self.budget is not None and self.generated + tokens > self.budget:
                self.truncated = True
                break
            taken.append(piece)
            self.generated += tokens
        return taken

    def finish_reason(self, scenario: Scenario) -> str:
        if scenario.finish_reason:
            return scenario.finish_reason
        if self.truncated:
            return "length"
        return "tool_calls" if self.calls else "stop"


def _grouped(pieces: list[str], size: int) -> list[str]:
    return ["".join(pieces[i : i + size]) for i in range(0, len(pieces), size)]


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.stats.requests += 1
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in state.models]
    return _json({"object": "list", "data": data})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    stats = state.stats
    stats.requests += 1
    stats.chat_requests += 1
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    state.requests.append(
        {
            "method": request.method,
            "path": request.path_qs,
            "headers": {str(name): value for name, value in request.headers.items()},
            "body": body if body is not None else raw.decode("utf-8", errors="replace"),
            "received_at": time.time(),
        }
    )
    if not isinstance(body, dict):
        return _bad_request("The body is not a JSON object.")
    expected = None if state.require_key is None else f"Bearer {state.require_key}"
    if expected is not None and request.headers.get("Authorization") != expected:
        return _json(_error_body(401), 401)

    model = body.get("model")
    model = model if isinstance(model, str) else ""
    base_model, _, model_suffix = model.partition("#")
    prompt_message = _last_user_message(body)
    try:
        layers: list[Mapping[str, Any]] = [state.scenario]
        metadata = body.get("metadata")
        if isinstance(metadata, dict) and "fake_scenario" in metadata:
            layers.append(_json_object(metadata["fake_scenario"], "metadata.fake_scenario"))
        if model_suffix:
            layers.append(_parse_suffix(model_suffix))
        directive, prompt = _split_directive(_message_text(prompt_message))
        if directive is not None:
            layers.append(directive)
        if SCENARIO_HEADER in request.headers:
            layers.append(_json_object(request.headers[SCENARIO_HEADER], SCENARIO_HEADER))
        scenario = Scenario.merged(*layers)
    except (ValueError, TypeError) as error:
        return _bad_request(f"fake upstream scenario: {error}")

    stats.in_flight += 1
    try:
        if scenario.delay_first_byte:
            await asyncio.sleep(scenario.delay_first_byte)
        if scenario.status is not None and scenario.status >= 400:
            stats.errors += 1
            headers = {}
            retry_after = scenario.retry_after or ("1" if scenario.status == 429 else None)
            if retry_after is not None:
                headers["Retry-After"] = retry_after
            return _json(_error_body(scenario.status, scenario), scenario.status, headers)
        encoding = state.encodings.get(scenario.encoding or encoding_for_model(base_model))
        if encoding is None:
            return _bad_request(f"fake upstream: unknown encoding {scenario.encoding!r}")
        n = body.get("n") if scenario.honour_n else 1
        n = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 16 else 1
        plans = [_Plan(scenario, body, prompt, encoding) for _ in range(n)]
        reply = _Reply(request, scenario, plans, base_model, prompt_tokens(body, encoding))
        if body.get("stream") is True:
            return await reply.stream(body)
        return await reply.respond()
    except (asyncio.CancelledError, ConnectionResetError):
        # aiohttp cancels the handler when its client goes away (or a write
        # fails); a connection we aborted ourselves is counted as a reset.
        if not request.get(_RESET_BY_US):
            stats.client_disconnects += 1
        raise
    finally:
        stats.in_flight -= 1


async def _stall(response: web.StreamResponse | None, scenario: Scenario) -> None:
    """Send nothing but keep-alive comments, for stall_seconds or until cancelled."""
    deadline = None if scenario.stall_seconds is None else time.monotonic() + scenario.stall_seconds
    interval = scenario.keepalive_comments
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        step = min(x for x in (remaining, interval, 3600.0) if x is not None)
        await asyncio.sleep(step)
        more_to_wait = remaining is None or step < remaining
        if interval is not None and response is not None and more_to_wait:
            await response.write(b": keep-alive\n\n")


_RESET_BY_US = "fake_upstream_reset"


class _Reply:
    """Writes one planned response, misbehaving as the scenario says."""

    def __init__(
        self,
        request: web.Request,
        scenario: Scenario,
        plans: list[_Plan],
        model: str,
        prompt_tokens: int,
    ) -> None:
        self.request = request
        self.stats = request.app[STATE].stats
        self.scenario = scenario
        self.plans = plans
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.id = "chatcmpl-fake-" + uuid.uuid4().hex[:20]
        self.created = int(time.time())
        self.include_usage = False
        self.finishes: list[bytes] = []

    async def reset(self) -> web.StreamResponse:
        """Abort the connection with a TCP RST (SO_LINGER 0), not a clean close;
        the handler is then cancelled by aiohttp, as for any lost connection."""
        self.stats.resets += 1
        self.request[_RESET_BY_US] = True
        transport = self.request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        await asyncio.sleep(10)
        return web.Response(status=204)  # not reached: cancelled once the loss is seen

    def usage(self) -> dict[str, Any]:
        completion = sum(plan.generated for plan in self.plans)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    async def respond(self) -> web.StreamResponse:
        scenario = self.scenario
        if scenario.stall_after is not None:
            await _stall(None, scenario)
        if scenario.reset_after is not None:
            return await self.reset()
        choices = []
        for index, plan in enumerate(self.plans):
            message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
            if plan.reasoning:
                message[scenario.reasoning_field] = "".join(plan.reasoning)
            if plan.calls:
                message["tool_calls"] = [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {
                            "name": call["name"],
                            "arguments": "".join(call["arguments"]),
                        },
                    }
                    for call in plan.calls
                ]
            elif scenario.refusal is not None:
                message["refusal"] = "".join(plan.refusal)
            else:
                message["content"] = "".join(plan.content)
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": plan.finish_reason(scenario),
                }
            )
        payload: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": choices,
        }
        if scenario.usage is not False:
            payload["usage"] = self.usage()
        self.stats.completed += 1
        if scenario.malformed_after is not None:
            return web.Response(body=b'{"id": "chatcmpl-broken', content_type="application/json")
        return _json(payload)

    def chunk(
        self, delta: dict[str, Any], finish_reason: str | None = None, index: int = 0
    ) -> bytes:
        event: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            event["usage"] = None  # as OpenAI: every chunk carries "usage": null
        return b"data: " + orjson.dumps(event) + b"\n\n"

    def choice_events(self, choice: int) -> Iterator[bytes]:
        """The output events of one choice, its finish chunk last."""
        scenario, plan = self.scenario, self.plans[choice]
        size = scenario.chunk_tokens
        for text in _grouped(plan.reasoning, size):
            yield self.chunk({scenario.reasoning_field: text}, index=choice)
        for text in _grouped(plan.refusal, size):
            yield self.chunk({"refusal": text}, index=choice)
        for text in _grouped(plan.content, size):
            yield self.chunk({"content": text}, index=choice)
        for index, call in enumerate(plan.calls):
            function = {"name": call["name"], "arguments": ""}
            head = {"index": index, "id": call["id"], "type": "function", "function": function}
            yield self.chunk({"tool_calls": [head]}, index=choice)
            for text in _grouped(call["arguments"], size):
                yield self.chunk(
                    {"tool_calls": [{"index": index, "function": {"arguments": text}}]},
                    index=choice,
                )
        yield self.chunk({}, plan.finish_reason(scenario), index=choice)

    def events(self) -> list[bytes]:
        """Every choice's events, interleaved, then the finish chunks (or, with
        ``sequential_choices``, each choice whole, its finish chunk included)."""
        streams = [list(self.choice_events(i)) for i in range(len(self.plans))]
        if self.scenario.sequential_choices:  # each choice ends before the next starts
            self.finishes = []
            return [event for events in streams for event in events]
        outputs = [events[:-1] for events in streams]
        finishes = [events[-1] for events in streams]
        ordered = [
            event
            for group in itertools.zip_longest(*outputs)
            for event in group
            if event is not None
        ]
        self.finishes = finishes
        return ordered

    async def stream(self, body: Mapping[str, Any]) -> web.StreamResponse:
        scenario = self.scenario
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        send_usage = self.include_usage if scenario.usage is None else scenario.usage
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "x-request-id": "req_" + self.id[-20:],
            }
        )
        await response.prepare(self.request)
        self.stats.streams_open += 1
        try:
            await response.write(self.chunk({"role": "assistant", "content": "", "refusal": None}))
            for sent, event in enumerate([*self.events(), None]):
                # Misbehaviour "after k output events" happens before event k+1
                # (or before the final chunk when there are only k).
                if sent == scenario.stall_after:
                    await _stall(response, scenario)
                if sent == scenario.reset_after:
                    return await self.reset()
                if sent == scenario.malformed_after:
                    await response.write(b"data: {this is not json\n\n")
                if event is None:
                    break
                if scenario.delay_per_chunk:
                    await asyncio.sleep(scenario.delay_per_chunk)
                await response.write(event)
            for finish in self.finishes:
                await response.write(finish)
            if send_usage:
                usage = {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "system_fingerprint": "fp_fake",
                    "choices": [],
                    "usage": self.usage(),
                }
                await response.write(b"data: " + orjson.dumps(usage) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self.stats.completed += 1
            return response
        finally:
            self.stats.streams_open -= 1


async def get_scenario(request: web.Request) -> web.Response:
    return _json(request.app[STATE].scenario)


async def set_scenario(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        knobs = _json_object(await request.text(), "scenario")
        Scenario.merged(knobs)
    except (ValueError, TypeError) as error:
        return _bad_request(str(error))
    state.scenario = knobs
    return _json(knobs)


async def get_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = asdict(state.stats)
    server = state.runner.server if state.runner is not None else None
    # Not counting the connection this request came on.
    data["connections_open"] = len(server.connections) - 1 if server is not None else None
    data["last_request"] = state.requests[-1] if state.requests else None
    return _json(data)


async def get_requests(request: web.Request) -> web.Response:
    return _json(list(request.app[STATE].requests))


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return _json({"ok": True})


def build_app(state: FakeState) -> web.Application:
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/_control/scenario", get_scenario)
    app.router.add_post("/_control/scenario", set_scenario)
    app.router.add_get("/_control/stats", get_stats)
    app.router.add_get("/_control/requests", get_requests)
    app.router.add_post("/_control/reset", reset)
    return app


async def serve(host: str, port: int, state: FakeState) -> None:
    # handler_cancellation: a handler is cancelled when its client goes away,
    # even mid-stall, so disconnects are seen (and counted) at once.
    runner = web.AppRunner(
        build_app(state), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
    )
    state.runner = runner
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"{READY_PREFIX}http://{host}:{bound}/v1", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.upstream", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--scenario", default="{}", help="default scenario, a JSON object")
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="served by GET /v1/models"
    )
    parser.add_argument("--require-key", default=None, help="answer 401 unless Bearer KEY")
    args = parser.parse_args(argv)
    base = _json_object(args.scenario, "--scenario")
    Scenario.merged(base)
    state = FakeState(
        encodings={name: load_encoding(name) for name in ENCODINGS},
        models=tuple(m for m in args.models.split(",") if m),
        base_scenario=base,
        require_key=args.require_key,
    )
    state.reset()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        asyncio.run(serve(args.host, args.port, state))
    else:
        uvloop.run(serve(args.host, args.port, state))


if __name__ == "__main__":
    main()
