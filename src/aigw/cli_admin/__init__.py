"""Admin commands that drive a running gateway over its HTTP admin API.

``aigw keys …``, ``aigw providers …`` and ``aigw apply -f FILE`` are built for
CI scripts as much as for people: ``--json`` output on stdout, messages on
stderr, secrets only from environment variables, and stable exit codes (see
:mod:`aigw.cli_admin.client`).
"""

from __future__ import annotations

import typer

from aigw.cli_admin import keys, providers
from aigw.cli_admin.apply import apply
from aigw.cli_admin.common import EXIT_CODES_EPILOG


def register(app: typer.Typer) -> None:
    """Add the ``keys`` and ``providers`` groups and the ``apply`` command to *app*."""
    app.add_typer(keys.app, name="keys")
    app.add_typer(providers.app, name="providers")
    app.command("apply", epilog=EXIT_CODES_EPILOG)(apply)
