"""The request bodies: a short prompt and a realistic ~2k-token conversation."""

from __future__ import annotations

import json
import random

from benchmarks.reference import count_prompt, load_o200k
from benchmarks.targets import MODEL

SHORT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in one short sentence."},
]

_WORDS = [
    "the",
    "gateway",
    "request",
    "token",
    "limit",
    "stream",
    "upstream",
    "provider",
    "model",
    "latency",
    "budget",
    "customer",
    "invoice",
    "report",
    "quarter",
    "revenue",
    "forecast",
    "growth",
    "market",
    "product",
    "team",
    "engineer",
    "deploy",
    "release",
    "incident",
    "review",
    "policy",
    "audit",
    "security",
    "database",
    "index",
    "query",
    "cache",
    "memory",
    "process",
    "thread",
    "server",
    "client",
    "network",
    "packet",
    "route",
    "region",
    "summarize",
    "explain",
    "compare",
    "list",
    "describe",
    "analyse",
    "translate",
    "draft",
    "rewrite",
    "check",
    "because",
    "although",
    "however",
    "therefore",
    "meanwhile",
    "instead",
    "whereas",
    "while",
    "after",
    "before",
    "quickly",
    "carefully",
    "clearly",
    "roughly",
    "exactly",
    "mostly",
    "rarely",
    "often",
    "usually",
    "always",
    "small",
    "large",
    "recent",
    "stable",
    "critical",
    "optional",
    "internal",
    "external",
    "simple",
    "complex",
    "Monday",
    "April",
    "Berlin",
    "Lisbon",
    "Tokyo",
    "Nairobi",
    "Quebec",
    "Oslo",
    "2024",
    "17",
    "3.5",
    "42%",
    "$1,200",
]


def _paragraph(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 22))]
        out.append(" ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!"]))
    return " ".join(out)


def realistic(target_tokens: int = 2000, seed: int = 7) -> list[dict]:
    """A system prompt, two earlier turns and a user message carrying a document."""
    rng = random.Random(seed)
    messages = [
        {
            "role": "system",
            "content": "You are a careful analyst for an operations team. " + _paragraph(rng, 12),
        },
        {"role": "user", "content": _paragraph(rng, 3)},
        {"role": "assistant", "content": _paragraph(rng, 6)},
    ]
    encode = load_o200k().encode_ordinary
    document: list[str] = []
    while True:
        user = {"role": "user", "content": "Summarize this:\n\n" + "\n\n".join(document)}
        if count_prompt(encode, [*messages, user]) >= target_tokens:
            return [*messages, user]
        document.append(_paragraph(rng, 4))


def big(target_tokens: int = 100_000, seed: int = 11) -> list[dict]:
    """One user message of about *target_tokens* tokens (a long document to read)."""
    rng = random.Random(seed)
    encode = load_o200k().encode_ordinary
    parts: list[str] = []
    tokens = 0
    while tokens < target_tokens:
        paragraph = _paragraph(rng, 6)
        parts.append(paragraph)
        tokens += len(encode(paragraph)) + 1
    return [{"role": "user", "content": "Summarize this:\n\n" + "\n\n".join(parts)}]


def body(messages: list[dict], stream: bool, knobs: str = "") -> bytes:
    """A Chat Completions body; ``knobs`` (``bench:chunks=…``) steer the fake upstream."""
    if knobs:
        messages = [*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + knobs}]
    payload: dict = {"model": MODEL, "messages": messages}
    if stream:
        payload["stream"] = True
    return json.dumps(payload, separators=(",", ":")).encode()


def prompt_tokens(messages: list[dict]) -> int:
    return count_prompt(load_o200k().encode_ordinary, messages)
