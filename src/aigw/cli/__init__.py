"""The ``aigw`` command line.

Server commands (:mod:`aigw.cli.server`) run the gateway and work on its
database directly; admin commands (:mod:`aigw.cli.keys`,
:mod:`aigw.cli.providers`, :mod:`aigw.cli.apply`) drive a running gateway over
its HTTP admin API. Those are built for CI scripts as much as for people:
``--json`` output on stdout, messages on stderr, secrets only from environment
variables, and stable exit codes (see :mod:`aigw.cli.errors`).
"""

from __future__ import annotations

import os

import typer

from aigw.cli import apply, keys, providers, server
from aigw.cli.common import EXIT_CODES_EPILOG
from aigw.cli.output import piped_width

app = typer.Typer(
    name="aigw",
    help="aigw: an AI gateway with per-key token limits.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold secrets
)
app.command()(server.serve)
app.command()(server.migrate)
app.command("admin-token")(server.admin_token)
app.command("new-encryption-key")(server.new_encryption_key)
app.command("rotate-keys")(server.rotate_keys)
app.add_typer(keys.app, name="keys")
app.add_typer(providers.app, name="providers")
app.command("apply", epilog=EXIT_CODES_EPILOG)(apply.apply)


def main() -> None:
    """The ``aigw`` program. Piped, typer's help and usage errors get the same width
    as the commands' own output instead of rich's 80-column guess."""
    width = piped_width()
    if width is not None and not os.environ.get("TERMINAL_WIDTH"):
        import typer.rich_utils

        typer.rich_utils.MAX_WIDTH = width  # typer's documented knob (TERMINAL_WIDTH)
    app()


__all__ = ["app", "main"]
