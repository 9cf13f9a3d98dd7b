"""The bundled tiktoken encodings (data files beside this module) and the rule
that picks one for a model name.

Shared by the admin API (a provider model's default ``encoding``) and the proxy
(which counts with it), so the two can never disagree.
"""

from __future__ import annotations

from typing import Final, Literal

O200K_BASE: Final = "o200k_base"
CL100K_BASE: Final = "cl100k_base"
EncodingName = Literal["o200k_base", "cl100k_base"]

# Model-name prefixes, checked in order (a name is matched after any
# "provider/" prefix and lower-cased). SPEC §1: GPT-4o/4.1/o-series/GPT-5 use
# o200k_base, GPT-4/3.5 use cl100k_base, anything else o200k_base.
_MODEL_ENCODINGS: Final[tuple[tuple[tuple[str, ...], EncodingName], ...]] = (
    (
        ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "gpt-oss", "o1", "o3", "o4"),
        "o200k_base",
    ),
    (("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-ada-002", "text-embedding-3"), "cl100k_base"),
)


def encoding_for_model(model: str) -> EncodingName:
    """The encoding to count *model* with when the operator named none."""
    name = model.rsplit("/", 1)[-1].strip().lower()
    for prefixes, encoding in _MODEL_ENCODINGS:
        if name.startswith(prefixes):
            return encoding
    return "o200k_base"
