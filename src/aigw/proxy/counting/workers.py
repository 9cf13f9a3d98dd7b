"""What a counting worker process does with a large body, per endpoint.

Each ``inspect_*`` function runs in a worker of :class:`.offload.CountingPool`
and makes the same checks, in the same order, as the endpoint's admission
makes in the gateway's process for a small body (it calls the same
functions): parse (duplicate and case-variant names refused), shape, the key's
model, the conversion an endpoint counts by, the count. A refusal comes back
as a :class:`.offload.Refusal` and is raised in the gateway; what passes comes
back as an :class:`Inspected`: the few small top-level fields the endpoint
decides with and the count — never the parsed body. The body to forward is
the client's bytes, or made here too (:func:`encode_edited`,
:func:`translate_chat`, a Messages translation), so no re-encoding or
translation of a large body runs in the gateway's process either.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
import tiktoken

from aigw.errors import AigwError
from aigw.proxy.counting.collect import collect
from aigw.proxy.counting.encodings import load_encoding
from aigw.proxy.counting.offload import Refusal
from aigw.proxy.counting.prompt import InputCount, count_collected

__all__ = [
    "Inspected",
    "apply_edits",
    "count_chat_body",
    "encode_edited",
    "inspect_chat_body",
    "inspect_embeddings_body",
    "inspect_messages_body",
    "inspect_responses_body",
    "translate_chat",
]

#: Top-level fields of a chat body the gateway decides with (all small once checked).
HEAD_FIELDS: Final = ("model", "stream", "n", "max_tokens", "max_completion_tokens")


@dataclass(frozen=True, slots=True)
class Inspected:
    """What the gateway needs of a body a worker parsed and checked: its small
    top-level fields (``head``), and, when asked for, its input count; for
    ``/v1/responses`` the first input the gateway cannot count; for
    ``/v1/messages`` the body to forward (``None``: the client's bytes), or the
    refusal its translation met (raised only once the request is admitted, as
    in the gateway's own path); when asked for, the body the provider's own
    token counter is to be asked with, or why there is none
    (:func:`aigw.proxy.upstream_count.counter_body`)."""

    head: dict[str, Any]
    count: InputCount | None
    uncountable: str | None = None
    upstream: bytes | Refusal | None = None
    counter_body: bytes | str | None = None
    #: Nested deeper than a body forwarded with edits may be (chat).
    deep: bool = False


_ENCODINGS: dict[str, tiktoken.Encoding] = {}


def _encoding(name: str) -> tiktoken.Encoding:
    encoding = _ENCODINGS.get(name)
    if encoding is None:
        encoding = _ENCODINGS[name] = load_encoding(name)
    return encoding


def _refusal(exc: AigwError) -> Refusal:
    return Refusal(type(exc), exc.detail, exc.param)


def _count(
    body: Mapping[str, Any], encoding: str | None, max_chars: int, stop_above: int | None = None
) -> InputCount | None:
    if encoding is None:
        return None
    return count_collected(collect(body, stop_above), _encoding(encoding), max_chars)


def warm_up(encodings: tuple[str, ...]) -> None:
    """Import what the ``inspect_*`` functions import on first use and load
    *encodings*, so that the first body a new worker gets does not wait for
    them (:meth:`.offload.CountingPool.warm`)."""
    import aigw.proxy.adapters
    import aigw.proxy.admission
    import aigw.proxy.embeddings
    import aigw.proxy.messages.checks
    import aigw.proxy.responses.admission  # noqa: F401

    for name in encodings:
        _encoding(name)


# --- /v1/chat/completions ---------------------------------------------------------


def inspect_chat_body(
    raw: bytes,
    encoding: str | None,
    max_chars: int,
    stop_above: int | None = None,
    counter: tuple[str, str] | None = None,
) -> Inspected | Refusal:
    """Parse and check the Chat Completions body *raw* as admission does, and
    count it with *encoding* (``None``: no count); *stop_above* (a ``reject``
    key's input limit) lets a file stop being inflated once its bound passes
    it, as in the gateway's own path (:func:`.collect.collect`). With *counter*
    (a provider kind and model), also make the body that provider's token
    counter is asked with."""
    # Imported here: admission imports this module.
    from aigw.proxy.admission import MAX_OUTPUT_TOKENS, optional_int, parse_chat
    from aigw.proxy.body import could_nest_deeper, nested_deeper

    try:
        body = parse_chat(raw)
        for field in ("max_tokens", "max_completion_tokens"):
            optional_int(body, field, 1, MAX_OUTPUT_TOKENS)
    except AigwError as exc:
        return _refusal(exc)
    head: dict[str, Any] = {field: body[field] for field in HEAD_FIELDS if field in body}
    if "stream_options" in body:  # null too: admission then replaces the member
        options = body["stream_options"]
        head["stream_options"] = (
            {"include_usage": bool(options.get("include_usage"))}
            if isinstance(options, Mapping)
            else None
        )
    counted = _count(body, encoding, max_chars, stop_above)
    deep = could_nest_deeper(raw) and nested_deeper(body)
    if counter is None:
        return Inspected(head, counted, deep=deep)
    from aigw.proxy.upstream_count import counter_body

    kind, model = counter
    return Inspected(head, counted, counter_body=counter_body(kind, model, body), deep=deep)


def count_chat_body(raw: bytes, encoding: str, max_chars: int) -> InputCount:
    """The input count of a Chat Completions body already checked by
    :func:`inspect_chat_body` (for the record, after it was admitted)."""
    return count_collected(collect(orjson.loads(raw)), _encoding(encoding), max_chars)


def apply_edits(body: dict[str, Any], edits: Mapping[str, Any]) -> None:
    """The gateway's edits to a body: top-level fields set; ``stream_options``
    merged into the client's own."""
    for name, value in edits.items():
        if name == "stream_options":
            options = body.get("stream_options")
            body[name] = {**(options if isinstance(options, dict) else {}), **value}
        else:
            body[name] = value


def encode_edited(raw: bytes, edits: Mapping[str, Any]) -> bytes | Refusal:
    """*raw* re-encoded with the gateway's *edits* (:func:`apply_edits`)."""
    from aigw.proxy.errors import InvalidRequest

    body = orjson.loads(raw)
    apply_edits(body, edits)
    try:
        return orjson.dumps(body)
    except TypeError:  # orjson writes at most 255 levels but reads up to 1024
        return Refusal(InvalidRequest, "The request body is nested too deeply", None)


def translate_chat(raw: bytes, edits: Mapping[str, Any], kind: str) -> bytes | Refusal:
    """The checked Chat Completions body *raw*, with *edits*, in the wire format
    of the provider *kind* (its adapter's ``encode_request``)."""
    from aigw.proxy.adapters import ADAPTERS
    from aigw.proxy.admission import untranslatable

    body = orjson.loads(raw)
    apply_edits(body, edits)
    try:
        return ADAPTERS[kind].encode_request(body, raw, bool(edits))
    except AigwError as exc:
        return _refusal(exc)
    except (TypeError, AttributeError, ValueError, KeyError, IndexError) as exc:
        return _refusal(untranslatable(exc))


# --- /v1/responses ----------------------------------------------------------------


def inspect_responses_body(
    raw: bytes, model: str, encoding: str, max_chars: int, stop_above: int | None = None
) -> Inspected | Refusal:
    """Parse and check the Responses body *raw* for a key of *model*, as
    :class:`aigw.proxy.responses.admission.ResponsesAdmission` does, and count
    its chat view (*stop_above*: as for :func:`inspect_chat_body`). The head
    holds the client's ``model`` (when sent), ``stream`` and
    ``max_output_tokens``."""
    from aigw.proxy.body import parse_unambiguous
    from aigw.proxy.exchange import check_model
    from aigw.proxy.responses.admission import OUTPUT_FIELD, RESPONSES_NAMES, checked_view

    try:
        body = parse_unambiguous(raw, RESPONSES_NAMES)
        head: dict[str, Any] = {f: body[f] for f in ("model", "stream") if f in body}
        check_model(body, model)
        requested, view = checked_view(body)
    except AigwError as exc:
        return _refusal(exc)
    head[OUTPUT_FIELD] = requested
    counted = _count(view.body, encoding, max_chars, stop_above)
    return Inspected(head, counted, view.uncountable)


# --- /v1/messages -----------------------------------------------------------------


def inspect_messages_body(
    raw: bytes,
    model: str,
    encoding: str,
    max_chars: int,
    *,
    kind: str | None,
    require_max_tokens: bool,
    translate: bool,
    stop_above: int | None = None,
    counter: bool = False,
) -> Inspected | Refusal:
    """Parse and check the Messages body *raw* for a key of *model* whose
    provider is of *kind*, as :class:`aigw.proxy.messages.ingress.MessagesIngress`
    does, and count it; with *translate*, also make the body to forward (the
    client's bytes with ``model`` filled in for an ``anthropic`` provider, the
    Chat Completions translation in the provider's format for others). The head
    holds ``model`` (filled in), ``stream`` and ``max_tokens``. *stop_above*:
    as for :func:`inspect_chat_body`; with *counter*, also make the body the
    provider's token counter is asked with."""
    from aigw.proxy.body import parse_unambiguous
    from aigw.proxy.messages import checks

    native = kind == "anthropic"
    try:
        check = functools.partial(checks.validate, require_max_tokens=require_max_tokens)
        body = parse_unambiguous(raw, checks.MESSAGES_NAMES, check)
        modified = checks.fill_model(body, model)
        chat, view = checks.chat_forms(body, model, native)
    except AigwError as exc:
        return _refusal(exc)
    head = {"model": body["model"], "stream": body.get("stream") is True}
    head["max_tokens"] = body.get("max_tokens")
    # Counted before the translation adds what the gateway asks for (include_usage).
    counted = _count(view, encoding, max_chars, stop_above)
    # Made before the translation, which may add to the chat form.
    made: bytes | str | None = None
    if counter and kind is not None:
        from aigw.proxy.upstream_count import counter_body

        made = counter_body(kind, model, chat, body if native else None)
    upstream: bytes | Refusal | None = None
    if translate and kind is not None:
        try:
            encoded = checks.encode_upstream(kind, body, chat, modified, raw)
        except AigwError as exc:
            upstream = _refusal(exc)
        else:
            upstream = None if encoded is raw else encoded
    return Inspected(head, counted, None, upstream, made)


# --- /v1/embeddings ---------------------------------------------------------------


def inspect_embeddings_body(
    raw: bytes, model: str, encoding: str, max_chars: int
) -> Inspected | Refusal:
    """Parse and check the embeddings body *raw* for a key of *model*, as
    :class:`aigw.proxy.embeddings.EmbeddingsEndpoint` does, and count its
    input. The head holds ``model`` and ``modified`` (whether the key's model
    is to be filled in)."""
    from aigw.proxy.body import parse_unambiguous
    from aigw.proxy.embeddings import EMBEDDINGS_NAMES, count_embeddings
    from aigw.proxy.exchange import check_model

    try:
        body = parse_unambiguous(raw, EMBEDDINGS_NAMES)
        modified = check_model(body, model)
        tokens, exact = count_embeddings(body, _encoding(encoding), max_chars)
    except AigwError as exc:
        return _refusal(exc)
    head = {"model": model, "modified": modified}
    return Inspected(head, InputCount(tokens, exact))
