"""Values too small to carry a prompt, which the counters let through uncounted.

Ids, flags and sampling settings are forwarded but not shown to the model. While
such a value stays plain (numbers, booleans, null, short strings, and small
containers of those) it is free; anything larger is counted as its JSON text, so
no field can carry a prompt past the input limit.

One rule for every endpoint: a setting or a block's flag (``cache_control``,
``metadata``, ``thinking``, ``reasoning``, …) is free while it is
:func:`is_setting`: one level of container at most, so a free value holds at
most ``FREE_ITEMS * (2 * FREE_CHARS)`` characters (8 KiB). A second level would
let one value hold 64 times that (a dict of 64 dicts of 64 short strings:
~0.5 MB per ``cache_control``, per block).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FREE_CHARS", "FREE_ITEMS", "is_plain", "is_setting"]

FREE_CHARS = 64  # the longest free string, and the longest free object key
FREE_ITEMS = 64  # the most members a free list or object may hold


def is_plain(value: Any, depth: int) -> bool:
    """Whether *value* holds only numbers, booleans, null and short strings, in
    containers nested at most *depth* deep (0: no container at all)."""
    if value is None or isinstance(value, bool | int | float):
        return True
    if isinstance(value, str):
        return len(value) <= FREE_CHARS
    if not isinstance(value, list | dict) or depth <= 0 or len(value) > FREE_ITEMS:
        return False
    if isinstance(value, dict):
        return all(
            len(key) <= FREE_CHARS and is_plain(item, depth - 1) for key, item in value.items()
        )
    return all(is_plain(item, depth - 1) for item in value)


def is_setting(value: Any) -> bool:
    """A value that cannot carry prompt text: a number, boolean, null, short
    string, or a small flat list/object of those."""
    return is_plain(value, 1)
