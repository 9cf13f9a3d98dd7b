"""Options every admin command shares, and the connection they open."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_args
from urllib.parse import urlsplit

import typer

from aigw.cli.client import AdminClient, resolve_admin_token
from aigw.cli.errors import UsageError
from aigw.cli.output import Output

EXIT_CODES_EPILOG = (
    "Exit codes: 0 ok · 1 not found · 2 usage or validation error · "
    "3 conflict (name/alias taken, in use, stale version) · "
    "4 authentication (missing or wrong admin token) · "
    "5 server error, database unavailable or gateway unreachable."
)
CONNECTION_HELP = "Connection"

UrlOption = Annotated[
    str,
    typer.Option(
        "--url",
        envvar="AIGW_URL",
        help="Base URL of the running gateway.",
        rich_help_panel=CONNECTION_HELP,
    ),
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--admin-token-file",
        envvar="AIGW_ADMIN_TOKEN_FILE",
        dir_okay=False,
        help="Read the admin token from this file (default: $AIGW_ADMIN_TOKEN; for a local "
        "gateway, the token `aigw serve` generated).",
        rich_help_panel=CONNECTION_HELP,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print machine-readable JSON on stdout (messages and errors go to stderr).",
    ),
]
YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a TTY).")
]


def command_group(name: str, help_text: str) -> typer.Typer:
    """A group of admin commands (``aigw keys``, ``aigw providers``)."""
    return typer.Typer(
        name=name,
        help=help_text,
        epilog=EXIT_CODES_EPILOG,
        no_args_is_help=True,
        pretty_exceptions_show_locals=False,  # locals may hold key codes
    )


def choices(name: str, literal: Any) -> Any:
    """An Enum whose members are the values of *literal* (an API schema's ``Literal``).

    typer (from 0.15) takes a fixed set of choices only as an Enum; building it
    from the schema keeps one list of allowed values. Members are ``str``, so each
    one is its value wherever a ``str`` goes (query parameters, JSON bodies);
    modules declare the option's type as the ``Literal`` for the type checker.
    """
    return StrEnum(name, [(value, value) for value in get_args(literal)])


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url must be an absolute http(s) URL, got {url!r}", code="usage")
    return url


@contextmanager
def connect(output: Output, url: str, token_file: Path | None) -> Iterator[AdminClient]:
    """An authenticated client; any :class:`AdminError` inside exits with its code."""
    with output.reporting():
        token = resolve_admin_token(check_url(url), token_file)
        with AdminClient(url, token) as client:
            yield client


def secret_from_env(variable: str, option: str) -> str:
    """The value of environment variable *variable*; unset or empty is a usage error.

    Secrets come from the environment so they never appear in argv (visible in
    ``ps``, shell history and CI logs).
    """
    if not variable or "=" in variable:
        raise typer.BadParameter(
            f"{variable!r} is not an environment variable name", param_hint=option
        )
    value = os.environ.get(variable)
    if not value:
        raise typer.BadParameter(
            f"environment variable {variable} is unset or empty", param_hint=option
        )
    return value


def interactive() -> bool:
    """Whether someone can answer a prompt (stdin is a terminal)."""
    return sys.stdin.isatty()


def confirm_or_exit(output: Output, question: str, *, yes: bool) -> None:
    """Ask before a destructive change; without a TTY only ``--yes`` proceeds."""
    if yes:
        return
    if not interactive():
        output.fail(
            UsageError("refusing to delete without confirmation: no TTY; pass --yes", code="usage")
        )
    if not typer.confirm(question, default=False, err=True):
        output.fail(UsageError("not confirmed; nothing deleted", code="not_confirmed"))
