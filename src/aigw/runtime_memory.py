"""What keeps a serving process's memory down: handing the C heap's free pages back
to the system, after start and after an encoding loads (glibc keeps freed pages
mapped: they would count in the idle RSS), and modules it need not import."""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``).

    Startup frees much of what it allocates (an encoding's ranks parsed in
    Python before tiktoken copies them, import-time garbage), and glibc keeps
    freed pages mapped. Called once after startup and after each encoding a
    running process loads: with the encodings built on the loop's thread
    (aigw.proxy.counting.encodings) the idle RSS is ~4 MB lower (issue 15).
    A few milliseconds; a no-op where the C library has no ``malloc_trim``.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def skip_pydantic_v1_until_imported() -> None:
    """Stop FastAPI importing ``pydantic.v1`` only to learn that nothing is a v1 model.

    FastAPI asks of each route parameter it builds (at import of the routers) and
    of some objects it encodes whether they are ``pydantic.v1`` models, importing
    ``pydantic.v1`` to answer: 26 modules, ~1.7 MB of an idle worker that serving
    never uses (issue 15). No class or instance can be a v1 model before
    ``pydantic.v1`` is imported, so its probes answer ``False`` until then and
    FastAPI's own answer after: the same answers, and FastAPI still refuses a v1
    model. A no-op when this FastAPI has no such probes.
    """
    try:
        from fastapi import _compat, encoders
        from fastapi._compat import shared
    except ImportError:  # pragma: no cover - a FastAPI without the module
        return
    for module, name in (
        (shared, "is_pydantic_v1_model_class"),
        (_compat, "is_pydantic_v1_model_instance"),
        (shared, "is_pydantic_v1_model_instance"),
        (encoders, "is_pydantic_v1_model_instance"),
    ):
        probe = getattr(module, name, None)
        if probe is None or getattr(probe, "_aigw_v1_imported_first", False):
            continue
        setattr(module, name, _once_v1_is_imported(probe))


def _once_v1_is_imported(probe: Callable[[object], bool]) -> Callable[[object], bool]:
    @functools.wraps(probe)
    def wrapper(obj: object) -> bool:
        return "pydantic.v1" in sys.modules and probe(obj)

    wrapper._aigw_v1_imported_first = True  # type: ignore[attr-defined]
    return wrapper
