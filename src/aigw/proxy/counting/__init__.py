"""LLM token counting with the tiktoken encodings bundled in the package.

Input: :func:`count_chat_input` counts a Chat Completions request the way
OpenAI bills its ``prompt_tokens`` (:mod:`.prompt`, with tool definitions
rendered by :mod:`.functions` and images priced by :mod:`.images`);
:func:`count_chat_input_async` does the same under a size cap, off the event
loop for large prompts. Output: :class:`OutputCounter` (:mod:`.output`)
counts generated text as it streams and says where to cut it at a token
limit. :class:`Encoders` (:mod:`.encodings`) holds the encodings, loaded
offline.
"""

from aigw.encodings import CL100K_BASE, O200K_BASE
from aigw.proxy.counting.bounds import input_upper_bound
from aigw.proxy.counting.encodings import Encoders, load_encoding
from aigw.proxy.counting.output import OutputCounter
from aigw.proxy.counting.prompt import (
    INLINE_BODY_BYTES,
    InputCount,
    count_chat_input,
    count_chat_input_async,
)

__all__ = [
    "CL100K_BASE",
    "INLINE_BODY_BYTES",
    "O200K_BASE",
    "Encoders",
    "InputCount",
    "OutputCounter",
    "count_chat_input",
    "count_chat_input_async",
    "input_upper_bound",
    "load_encoding",
]
