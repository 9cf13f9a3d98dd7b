"""The ``aigw`` command line.

Server commands (:mod:`aigw.cli.server`) run the gateway and work on its
database directly; admin commands (:mod:`aigw.cli.keys`,
:mod:`aigw.cli.providers`, :mod:`aigw.cli.apply`) drive a running gateway over
its HTTP admin API. Those are built for CI scripts as much as for people:
``--json`` output on stdout, messages on stderr, secrets only from environment
variables, and stable exit codes (see :mod:`aigw.cli.errors`).

A server command loads only the server commands: ``aigw serve`` goes on to be
the gateway's process, which then never holds the admin commands' HTTP client,
tables and plans (~5 MB of its idle memory, issue 15).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from aigw.cli import server
from aigw.cli.width import piped_width

HELP = "aigw: an AI gateway with per-key token limits."
# The commands that run on this machine, named as on the command line.
SERVER_COMMANDS = {
    "serve": server.serve,
    "migrate": server.migrate,
    "admin-token": server.admin_token,
    "new-encryption-key": server.new_encryption_key,
    "rotate-keys": server.rotate_keys,
}


def _typer() -> typer.Typer:
    app = typer.Typer(
        name="aigw",
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,  # locals may hold secrets
    )
    for name, command in SERVER_COMMANDS.items():
        app.command(name)(command)
    return app


def build_app() -> typer.Typer:
    """The whole command line: server and admin commands."""
    from aigw.cli import apply, keys, providers
    from aigw.cli.common import EXIT_CODES_EPILOG

    app = _typer()
    app.add_typer(keys.app, name="keys")
    app.add_typer(providers.app, name="providers")
    app.command("apply", epilog=EXIT_CODES_EPILOG)(apply.apply)
    return app


def _server_only() -> typer.Typer:
    app = _typer()
    # More than one command keeps typer's group (``aigw serve``), as in build_app;
    # the callback only makes that explicit.
    app.callback()(lambda: None)
    return app


_app: typer.Typer | None = None


def __getattr__(name: str) -> Any:
    # ``aigw.cli.app``: the whole command line, built on first use.
    if name == "app":
        global _app
        if _app is None:
            _app = build_app()
        return _app
    raise AttributeError(name)


def main() -> None:
    """The ``aigw`` program. Piped, typer's help and usage errors get the same width
    as the commands' own output instead of rich's 80-column guess."""
    width = piped_width()
    if width is not None and not os.environ.get("TERMINAL_WIDTH"):
        # typer's documented knob, read when typer.rich_utils is imported, which is
        # when help or an error is printed. Importing it here would load rich's
        # Markdown and Pygments into every command, the gateway `aigw serve` goes
        # on to run included (~5 MB of its memory, ~0.07 s of CPU; issue 15).
        os.environ["TERMINAL_WIDTH"] = str(width)
        rich_utils: Any = sys.modules.get("typer.rich_utils")
        if rich_utils is not None:  # imported already (by a caller of main())
            rich_utils.MAX_WIDTH = width
    command = sys.argv[1] if len(sys.argv) > 1 else None
    app = _server_only() if command in SERVER_COMMANDS else __getattr__("app")
    app()


__all__ = ["SERVER_COMMANDS", "app", "build_app", "main"]
