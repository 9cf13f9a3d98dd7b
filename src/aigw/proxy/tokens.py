"""Re-exports :mod:`aigw.proxy.counting` under its old name.

Temporary shim for the parallel refactor; the lead deletes it at merge.
"""

from aigw.proxy.counting import (
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
