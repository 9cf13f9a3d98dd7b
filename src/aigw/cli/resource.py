"""One helper for every admin resource the CLI drives (providers, AI API keys).

A :class:`Resource` names what differs between them — the API collection, the
noun in messages, the field that is its human name, its table columns and
detail rows — and everything else is written once here: finding by id or name,
listing a page or every page, showing, creating, updating and deleting with
the same messages, confirmation and ``--json`` documents.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import RenderableType

from aigw.cli.client import DEFAULT_URL, AdminClient, Page, Record
from aigw.cli.common import (
    EXIT_CODES_EPILOG,
    JsonOption,
    TokenFileOption,
    UrlOption,
    YesOption,
    confirm_or_exit,
    connect,
)
from aigw.cli.errors import NotFoundError, UsageError
from aigw.cli.output import Column, Output


@dataclass(frozen=True)
class Resource:
    """An admin API collection as the CLI shows it."""

    collection: str
    """API path of the collection, e.g. ``/apikeys``."""
    noun: str
    """In messages: ``created AI API key …``."""
    short_noun: str
    """In the page footer: ``3 of 10 keys``."""
    name_field: str
    """The unique human name (``alias``, ``name``); case-insensitive."""
    columns: tuple[Column, ...]
    details: Callable[[Record], Sequence[tuple[str, RenderableType]]]
    trim_names: bool = False
    """Names are stored trimmed, so a reference is trimmed before matching."""
    find_params: Mapping[str, str] = field(default_factory=dict)
    """Extra listing parameters when searching by name."""
    secret_fields: frozenset[str] = frozenset()
    """Body fields that are secrets: named last in messages, never shown."""
    idempotent_create: bool = False
    """Creation carries an ``Idempotency-Key`` (a fresh one unless given), so the
    client may retry it safely."""

    def page(self, client: AdminClient, **params: Any) -> Page:
        return client.page(self.collection, params)

    def iterate(self, client: AdminClient, **filters: Any) -> Iterator[Record]:
        return client.iterate(self.collection, filters)

    def find(self, client: AdminClient, name: str) -> Record | None:
        """The item called *name* (case-insensitive), or None."""
        if self.trim_names:
            name = name.strip()
        if not name:
            return None
        wanted = name.lower()
        for record in self.iterate(client, q=name[:64], **self.find_params):
            if record[self.name_field].lower() == wanted:
                return record
        return None

    def create(
        self, client: AdminClient, body: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Record:
        if self.idempotent_create:
            idempotency_key = idempotency_key or f"aigw-cli-{uuid.uuid4()}"
        return client.create(self.collection, body, idempotency_key=idempotency_key)

    def update(
        self, client: AdminClient, record_id: str, body: Mapping[str, Any], *, version: int | None
    ) -> Record:
        return client.update(self.collection, record_id, body, version=version)

    def delete(self, client: AdminClient, record_id: str, *, version: int | None) -> None:
        client.delete(self.collection, record_id, version=version)

    def resolve(self, client: AdminClient, ref: str) -> Record:
        """By id, or by name when *ref* is not an id (or nothing has that id)."""
        as_id = as_uuid(ref)
        if as_id is not None:
            try:
                return client.get(self.collection, as_id)
            except NotFoundError:
                pass
        found = self.find(client, ref)
        if found is None:
            raise NotFoundError(
                f"no {self.noun} with id or {self.name_field} {ref!r}",
                code="not_found",
                status=404,
            )
        return found

    def label(self, record: Record) -> str:
        """``name (id)``, as messages name one item."""
        return f"{record[self.name_field]} ({record['id']})"

    def show(self, output: Output, record: Record) -> None:
        output.record(record, self.details)


def as_uuid(value: str) -> str | None:
    """*value* as a canonical UUID string, or None when it is not one."""
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        return None


def list_command(
    resource: Resource,
    filters: Mapping[str, Any],
    *,
    limit: int,
    cursor: str | None,
    all_pages: bool,
    json_output: bool,
    url: str,
    token_file: Path | None,
) -> None:
    """``list``: one page (with a footer pointing at the next), or ``--all`` of them."""
    output = Output(json_output)
    with connect(output, url, token_file) as client:
        if all_pages:
            items = list(resource.iterate(client, **filters))
            total, next_cursor = len(items), None
        else:
            page = resource.page(client, **filters, limit=limit, cursor=cursor)
            items, total, next_cursor = page["items"], page["total"], page["next_cursor"]
    output.listing(
        items, resource.columns, total=total, next_cursor=next_cursor, noun=resource.short_noun
    )


def get_command(
    resource: Resource, ref: str, *, json_output: bool, url: str, token_file: Path | None
) -> None:
    """``get``: one item by id or name."""
    output = Output(json_output)
    with connect(output, url, token_file) as client:
        resource.show(output, resource.resolve(client, ref))


def create_command(
    resource: Resource,
    body: Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    json_output: bool,
    url: str,
    token_file: Path | None,
) -> None:
    """``create``: send *body*, then name and show what was created."""
    output = Output(json_output)
    with connect(output, url, token_file) as client:
        created = resource.create(client, body, idempotency_key=idempotency_key)
    output.note(f"created {resource.noun} {resource.label(created)}")
    resource.show(output, created)


def update_command(
    resource: Resource,
    ref: str,
    body: dict[str, Any],
    *,
    complete: Callable[[Record, dict[str, Any]], None] | None = None,
    json_output: bool,
    url: str,
    token_file: Path | None,
) -> None:
    """``update``: change the fields in *body* of the item *ref*, only if nobody
    changed it since it was read (``If-Match``). *complete* may add fields that
    depend on the current item; with neither, it is a usage error."""
    output = Output(json_output)
    if not body and complete is None:
        output.fail(UsageError("nothing to update: give at least one field option", code="usage"))
    with connect(output, url, token_file) as client:
        current = resource.resolve(client, ref)
        if complete is not None:
            complete(current, body)
        updated = resource.update(client, current["id"], body, version=current["version"])
    secrets = [name for name in sorted(resource.secret_fields) if name in body]
    changed = sorted(set(body) - resource.secret_fields) + secrets
    output.note(f"updated {resource.noun} {updated[resource.name_field]}: {', '.join(changed)}")
    resource.show(output, updated)


def delete_command(
    resource: Resource,
    ref: str,
    *,
    yes: bool,
    json_output: bool,
    url: str,
    token_file: Path | None,
) -> None:
    """``delete``: confirm (unless *yes*), delete at the version read, report."""
    output = Output(json_output)
    with connect(output, url, token_file) as client:
        record = resource.resolve(client, ref)
        name = record[resource.name_field]
        confirm_or_exit(
            output, f"Confirm Delete? {resource.noun} {name!r} ({record['id']})", yes=yes
        )
        resource.delete(client, record["id"], version=record["version"])
    output.note(f"deleted {resource.noun} {resource.label(record)}")
    if json_output:
        output.emit_json({"deleted": True, "id": record["id"], resource.name_field: name})


def _connection_annotations(ref: Any) -> dict[str, Any]:
    # typer reads a command's parameters from its annotations; a command made
    # here takes the caller's ``ref`` argument type, so they are set as objects.
    return {
        "ref": ref,
        "json_output": JsonOption,
        "url": UrlOption,
        "admin_token_file": TokenFileOption,
        "return": None,
    }


def add_get_command(app: typer.Typer, resource: Resource, ref_argument: Any, doc: str) -> None:
    """Add ``get ID_OR_NAME`` for *resource* to *app*; *doc* is its help."""

    def get(
        ref: str,
        json_output: bool = False,
        url: str = DEFAULT_URL,
        admin_token_file: Path | None = None,
    ) -> None:
        get_command(resource, ref, json_output=json_output, url=url, token_file=admin_token_file)

    get.__annotations__ = _connection_annotations(ref_argument)
    get.__doc__ = doc
    app.command("get", epilog=EXIT_CODES_EPILOG)(get)


def add_delete_command(app: typer.Typer, resource: Resource, ref_argument: Any, doc: str) -> None:
    """Add ``delete ID_OR_NAME [--yes]`` for *resource* to *app*; *doc* is its help."""

    def delete(
        ref: str,
        yes: bool = False,
        json_output: bool = False,
        url: str = DEFAULT_URL,
        admin_token_file: Path | None = None,
    ) -> None:
        delete_command(
            resource, ref, yes=yes, json_output=json_output, url=url, token_file=admin_token_file
        )

    delete.__annotations__ = {**_connection_annotations(ref_argument), "yes": YesOption}
    delete.__doc__ = doc
    app.command("delete", epilog=EXIT_CODES_EPILOG)(delete)
