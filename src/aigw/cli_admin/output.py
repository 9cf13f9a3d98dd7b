"""What the admin commands print: rich tables for people, JSON for scripts.

The contract for scripts: with ``--json`` stdout carries exactly one JSON
document (the API's own shapes), and everything else — progress, notes,
errors — goes to stderr. An error under ``--json`` is one line of JSON on
stderr, ``{"error": {"code", "status", "message", "exit_code", "errors"?}}``.
User-supplied strings are rendered as plain text, never as rich markup.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from aigw.cli_admin.client import AdminError, ApiKeyRecord, ProviderRecord

TOKEN_NOTE = "Store this client token now: you will not see it again."  # noqa: S105 - prose


def limit_text(value: int) -> str:
    return "unlimited" if value == 0 else f"{value:,}"


def _when(value: str) -> str:
    # ISO 8601 from the API; seconds are enough for a table.
    return value.replace("T", " ")[:19]


def _width() -> int | None:
    """Rich's own choice on a terminal; when piped, wide enough that tables do
    not fold ids (rich would assume 80 columns)."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return None
    return 200


class Output:
    """One per command invocation: knows whether to speak JSON or rich."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.out = Console(highlight=False, width=_width())
        self.err = Console(stderr=True, highlight=False)

    # --- primitives

    def emit_json(self, payload: Any) -> None:
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def note(self, message: str, *, style: str | None = None) -> None:
        """A message for the person at the terminal; always on stderr."""
        self.err.print(Text(message, style=style or ""))

    def error(self, exc: AdminError) -> None:
        if self.json_mode:
            sys.stderr.write(json.dumps(exc.to_dict(), ensure_ascii=False) + "\n")
            sys.stderr.flush()
            return
        line = Text("error: ", style="bold red")
        line.append(exc.message)
        if exc.code not in ("error", "usage"):
            line.append(f" ({exc.code})", style="dim")
        self.err.print(line)
        for item in exc.errors:
            field = item.get("field") or item.get("location") or "body"
            self.err.print(Text(f"  {field}: {item.get('message', 'invalid')}"))

    def fail(self, exc: AdminError) -> NoReturn:
        self.error(exc)
        raise typer.Exit(exc.exit_code)

    @contextmanager
    def reporting(self) -> Iterator[None]:
        """Turn :class:`AdminError` into its message and exit code."""
        try:
            yield
        except AdminError as exc:
            self.fail(exc)

    # --- providers

    def providers(
        self, items: Sequence[ProviderRecord], *, total: int, next_cursor: str | None
    ) -> None:
        if self.json_mode:
            self.emit_json({"items": list(items), "next_cursor": next_cursor, "total": total})
            return
        table = Table(header_style="bold", expand=False)
        table.add_column("NAME", overflow="fold")
        table.add_column("KIND")
        table.add_column("BASE URL", overflow="fold")
        table.add_column("MODELS", overflow="fold")
        table.add_column("ID", overflow="fold", style="dim")
        for provider in items:
            table.add_row(
                Text(provider["name"]),
                Text(provider["kind"]),
                Text(provider["base_url"]),
                Text(", ".join(model["name"] for model in provider["models"])),
                Text(provider["id"]),
            )
        self.out.print(table)
        self._page_footer(len(items), total, next_cursor, "provider")

    def provider(self, provider: ProviderRecord) -> None:
        if self.json_mode:
            self.emit_json(provider)
            return
        table = _detail_table()
        for label, value in (
            ("ID", provider["id"]),
            ("Name", provider["name"]),
            ("Kind", provider["kind"]),
            ("Base URL", provider["base_url"]),
            ("Created", _when(provider["created_at"])),
            ("Updated", _when(provider["updated_at"])),
            ("Version", str(provider["version"])),
        ):
            table.add_row(label, Text(value))
        models = Text()
        for index, model in enumerate(provider["models"]):
            if index:
                models.append("\n")
            models.append(model["name"])
            models.append(f"  {model['encoding']}", style="dim")
        table.add_row("Models", models)
        self.out.print(table)

    # --- keys

    def keys(self, items: Sequence[ApiKeyRecord], *, total: int, next_cursor: str | None) -> None:
        if self.json_mode:
            self.emit_json({"items": list(items), "next_cursor": next_cursor, "total": total})
            return
        table = Table(header_style="bold", expand=False)
        table.add_column("ALIAS", overflow="fold")
        table.add_column("STATUS")
        table.add_column("PROVIDER/MODEL", overflow="fold")
        table.add_column("INPUT", justify="right", overflow="fold")
        table.add_column("OUTPUT", justify="right", overflow="fold")
        table.add_column("USAGE LIMIT", overflow="fold")
        table.add_column("KEY CODE", overflow="fold")
        table.add_column("ID", overflow="fold", style="dim")
        for key in items:
            table.add_row(
                Text(key["alias"]),
                _status_text(key["status"]),
                Text(f"{key['provider']}/{key['model']}"),
                limit_text(key["input_limit"]),
                limit_text(key["output_limit"]),
                Text(key["usage_limit"]),
                Text(key["key_code_masked"]),
                Text(key["id"]),
            )
        self.out.print(table)
        self._page_footer(len(items), total, next_cursor, "key")

    def key(self, key: ApiKeyRecord) -> None:
        """A key's details; the one-time ``token`` too, when the response has it."""
        if self.json_mode:
            self.emit_json(key)
            return
        table = _detail_table()
        table.add_row("ID", Text(key["id"]))
        table.add_row("Alias", Text(key["alias"]))
        table.add_row("Status", _status_text(key["status"]))
        table.add_row("Provider/Model", Text(f"{key['provider']}/{key['model']}"))
        table.add_row("Key code", Text(key["key_code_masked"]))
        table.add_row("Token prefix", Text(key["token_prefix"]))
        table.add_row("Input limit", limit_text(key["input_limit"]))
        table.add_row("Output limit", limit_text(key["output_limit"]))
        table.add_row("Usage limit", Text(key["usage_limit"]))
        table.add_row("Created", _when(key["created_at"]))
        table.add_row("Updated", _when(key["updated_at"]))
        table.add_row("Version", str(key["version"]))
        self.out.print(table)
        token = key.get("token")
        if token:
            self.token(token)

    def token(self, token: str) -> None:
        """The client token, in human mode: on stdout, with the one-time warning."""
        self.out.print(Text("Client token: ", style="bold") + Text(token))
        self.out.print(Text(TOKEN_NOTE, style="yellow"))

    def _page_footer(self, shown: int, total: int, next_cursor: str | None, noun: str) -> None:
        plural = noun if total == 1 else f"{noun}s"
        message = f"{shown} of {total} {plural}"
        if next_cursor:
            message += f"; next page: --cursor {next_cursor} (or --all)"
        self.note(message, style="dim")


def _detail_table() -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table


def _status_text(status: str) -> Text:
    return Text(status, style="green" if status == "enabled" else "yellow")
