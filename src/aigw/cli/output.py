"""What the admin commands print: rich tables for people, JSON for scripts.

The contract for scripts: with ``--json`` stdout carries exactly one JSON
document (the API's own shapes), and everything else — progress, notes,
errors — goes to stderr. An error under ``--json`` is one line of JSON on
stderr, ``{"error": {"code", "status", "message", "exit_code", "errors"?}}``.
User-supplied strings are rendered as plain text, never as rich markup.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import typer
from rich.console import Console, JustifyMethod, OverflowMethod, RenderableType
from rich.table import Table
from rich.text import Text

from aigw.cli.client import Record
from aigw.cli.errors import AdminError
from aigw.cli.width import piped_width

TOKEN_NOTE = "Store this client token now: you will not see it again."  # noqa: S105 - prose


def limit_text(value: int) -> str:
    return "unlimited" if value == 0 else f"{value:,}"


@dataclass(frozen=True)
class Column:
    """One column of a listing table: its header, how a record fills it, its layout."""

    header: str
    cell: Callable[[Record], RenderableType]
    overflow: OverflowMethod = "fold"
    justify: JustifyMethod = "left"
    style: str | None = None


def when(value: str) -> str:
    # ISO 8601 from the API; seconds are enough for a table.
    return value.replace("T", " ")[:19]


class Output:
    """One per command invocation: knows whether to speak JSON or rich."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.out = Console(highlight=False, width=piped_width(), soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

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

    def listing(
        self,
        records: Sequence[Record],
        columns: Sequence[Column],
        *,
        total: int,
        next_cursor: str | None,
        noun: str,
    ) -> None:
        """A page of records: the API's page document, or a table and a footer."""
        if self.json_mode:
            self.emit_json({"items": list(records), "next_cursor": next_cursor, "total": total})
            return
        table = Table(header_style="bold", expand=False)
        for column in columns:
            table.add_column(
                column.header, justify=column.justify, overflow=column.overflow, style=column.style
            )
        for record in records:
            table.add_row(*(column.cell(record) for column in columns))
        self.out.print(table)
        self._page_footer(len(records), total, next_cursor, noun)

    def record(
        self, record: Record, rows: Callable[[Record], Sequence[tuple[str, RenderableType]]]
    ) -> None:
        """One record: the API's document, or ``rows(record)`` as a label/value table,
        followed by the one-time client ``token`` when the record has it."""
        if self.json_mode:
            self.emit_json(record)
            return
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for label, value in rows(record):
            table.add_row(label, value)
        self.out.print(table)
        token = record.get("token")
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


def status_text(status: str) -> Text:
    return Text(status, style="green" if status == "enabled" else "yellow")
