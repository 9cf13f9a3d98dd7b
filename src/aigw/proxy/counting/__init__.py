"""Temporary shim until the counting package lands: re-exports tokens.py."""

from aigw.proxy.tokens import *  # noqa: F403
from aigw.proxy.tokens import (
    CL100K_BASE,
    O200K_BASE,
    Encoders,
    OutputCounter,
    count_chat_input,
    count_chat_input_async,
    load_encoding,
)

__all__ = [
    "CL100K_BASE",
    "O200K_BASE",
    "Encoders",
    "OutputCounter",
    "count_chat_input",
    "count_chat_input_async",
    "load_encoding",
]
