"""The ``aigw`` command line.

Server commands (:mod:`aigw.cli.server`) run the gateway and work on its
database directly; admin commands (:mod:`aigw.cli.keys`,
:mod:`aigw.cli.providers`, :mod:`aigw.cli.apply`) drive a running gateway over
its HTTP admin API. Those are built for CI scripts as much as for people:
``--json`` output on stdout, messages on stderr, secrets only from environment
variables, and stable exit codes (see :mod:`aigw.cli.errors`).
"""

from __future__ import annotations

import typer

from aigw.cli import apply, keys, providers, server
from aigw.cli.common import EXIT_CODES_EPILOG

app = typer.Typer(
    name="aigw",
    help="aigw: an AI gateway with per-key token limits.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold secrets
)
app.command()(server.serve)
app.command()(server.migrate)
app.command("new-encryption-key")(server.new_encryption_key)
app.command("rotate-keys")(server.rotate_keys)
app.add_typer(keys.app, name="keys")
app.add_typer(providers.app, name="providers")
app.command("apply", epilog=EXIT_CODES_EPILOG)(apply.apply)

__all__ = ["app"]
