"""``aigw apply -f keys.yaml``: make the gateway's providers and keys match a file.

The file is the whole truth for every provider and key it names; things it does
not name are left alone unless ``--prune``. How the plan is made and carried
out, and how key codes are compared, is in :mod:`aigw.cli.plan`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from aigw.cli.client import DEFAULT_URL
from aigw.cli.common import JsonOption, TokenFileOption, UrlOption, connect
from aigw.cli.errors import AdminError, UsageError
from aigw.cli.output import TOKEN_NOTE, Output
from aigw.cli.plan import Plan, Step, execute, make_plan, model_map

_SYMBOL = {"create": "+", "update": "~", "unchanged": "=", "delete": "-"}
_STYLE = {"create": "green", "update": "yellow", "unchanged": "dim", "delete": "red"}


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):  # a model list
        return ", ".join(f"{model['name']} ({model['encoding']})" for model in value)
    return str(value)


def _describe(step: Step) -> Text:
    text = Text()
    for index, (name, (before, after)) in enumerate(step.changes.items()):
        if index:
            text.append("\n")
        text.append(f"{name}: ", style="bold")
        if name == "models" and before is not None:
            have, want = model_map(before), model_map(after)
            parts = [f"+{m}" for m in want if m not in have]
            parts += [f"-{m}" for m in have if m not in want]
            parts += [
                f"{m}: {have[m]} → {want[m]}" for m in want if m in have and have[m] != want[m]
            ]
            text.append(" ".join(parts))
        elif step.action == "create":
            text.append(_show(after))
        else:
            text.append(f"{_show(before)} → {_show(after)}")
    return text


def render_plan(output: Output, plan: Plan, source: str) -> None:
    table = Table(title=f"Plan for {source}", title_justify="left", header_style="bold")
    table.add_column("")
    table.add_column("KIND")
    table.add_column("NAME", overflow="fold")
    table.add_column("CHANGES", overflow="fold")
    for step in plan.steps:
        style = _STYLE[step.action]
        table.add_row(
            Text(f"{_SYMBOL[step.action]} {step.action}", style=style),
            step.kind,
            Text(step.name),
            _describe(step),
        )
    output.out.print(table)
    summary = plan.summary()
    output.out.print(
        f"Plan: {summary['create']} to create, {summary['update']} to update, "
        f"{summary['delete']} to delete, {summary['unchanged']} unchanged."
    )


def result_document(plan: Plan, source: str, *, dry_run: bool) -> dict[str, Any]:
    return {
        "file": source,
        "dry_run": dry_run,
        "in_sync": not plan.changed,
        "changed": plan.changed and not dry_run,
        "summary": plan.summary(),
        "steps": [step.to_dict() for step in plan.steps],
    }


def apply(
    file: Annotated[
        str,
        typer.Option(
            "--file", "-f", metavar="FILE", help="YAML file with providers and keys ('-' = stdin)."
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and change nothing.")
    ] = False,
    prune: Annotated[
        bool,
        typer.Option("--prune", help="Also delete keys and providers the file does not name."),
    ] = False,
    replace_key_codes: Annotated[
        bool,
        typer.Option(
            "--replace-key-codes",
            help="Send every key code, even when its mask matches the stored one.",
        ),
    ] = False,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Create or update providers and AI API keys to match a YAML file; idempotent.

    Key codes come only from environment variables named in the file
    (key_code_env: VAR). See docs/cli.md for the file format.
    """
    from aigw.cli.applyfile import FileError, load_apply_file, read_key_codes

    output = Output(json_output)
    source = "<stdin>" if file == "-" else file
    with output.reporting():
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {source}: {exc}", code="usage") from None
        try:
            spec = load_apply_file(text)
            key_codes = read_key_codes(spec)
        except FileError as exc:
            raise UsageError(f"{source}: {exc}", code="invalid_file", errors=exc.errors) from None

    with connect(output, url, admin_token_file) as client:
        plan = make_plan(client, spec, key_codes, prune=prune, replace_key_codes=replace_key_codes)
        if not json_output:
            render_plan(output, plan, source)
        if dry_run or not plan.changed:
            if json_output:
                output.emit_json(result_document(plan, source, dry_run=dry_run))
            elif not plan.changed:
                output.out.print(
                    Text(f"No changes: the gateway already matches {source}.", style="green")
                )
            else:
                output.out.print(Text("Dry run: nothing was changed.", style="yellow"))
            return
        try:
            execute(client, plan, output)
        except AdminError:
            if json_output:
                output.emit_json(result_document(plan, source, dry_run=False))
            done = sum(1 for step in plan.steps if step.done)
            output.note(
                f"apply stopped after {done} change(s); run it again once fixed", style="red"
            )
            _show_tokens(output, plan)
            raise
    if json_output:
        output.emit_json(result_document(plan, source, dry_run=False))
        return
    summary = plan.summary()
    output.out.print(
        Text(
            f"Applied: {summary['create']} created, {summary['update']} updated, "
            f"{summary['delete']} deleted, {summary['unchanged']} unchanged.",
            style="green",
        )
    )
    _show_tokens(output, plan)


def _show_tokens(output: Output, plan: Plan) -> None:
    """Client tokens of keys created by this run, in human mode (JSON has them per step)."""
    created = [step for step in plan.steps if step.token]
    if output.json_mode or not created:
        return
    table = Table(title="Client tokens of the new keys", title_justify="left", header_style="bold")
    table.add_column("ALIAS", overflow="fold")
    table.add_column("TOKEN", overflow="fold")
    for step in created:
        table.add_row(Text(step.name), Text(step.token or ""))
    output.out.print(table)
    output.out.print(Text(TOKEN_NOTE, style="yellow"))
