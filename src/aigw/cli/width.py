"""The width of CLI output when piped (a module of its own: ``aigw serve`` reads it
without loading the admin commands' output machinery)."""

from __future__ import annotations

import os
import sys

PIPED_WIDTH = 200


def piped_width() -> int | None:
    """Rich's own choice on a terminal (or with ``COLUMNS``); when piped, wide
    enough that tables do not fold ids and help is not cut into 80 columns
    (rich would assume 80)."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return None
    return PIPED_WIDTH
