"""``aigw serve | migrate | admin-token | new-encryption-key | rotate-keys``: run
the gateway and administer it on this machine (not over HTTP).

``serve``, ``migrate`` and ``rotate-keys`` start an embedded PostgreSQL in the
data folder when ``AIGW_DATABASE_URL`` is not set.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import subprocess  # nosec B404 - runs only our own migrate command
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from aigw.config import Settings

# The settings (pydantic-settings, ~0.15 s of CPU to import) load inside the commands
# that read them: `aigw --help` and the admin commands, which build this module's
# commands too, never do.

err = Console(stderr=True, soft_wrap=True)  # one message, one line, even when piped


@contextmanager
def database(settings: Settings, meanwhile: Callable[[], object] | None = None) -> Iterator[str]:
    """The configured database URL, or an embedded server in the data folder.

    *meanwhile* runs in this thread while the embedded server starts in another
    (``serve`` imports the app then: the server's start-up is spent waiting on
    pg_ctl, the imports are spent on this CPU)."""
    if settings.database_url:
        if meanwhile is not None:
            meanwhile()
        yield settings.database_url
        return
    from aigw.db.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(settings.data_dir)
    err.print(f"[dim]starting embedded PostgreSQL in {server.pgdata}[/]")
    with ThreadPoolExecutor(1, thread_name_prefix="embedded-postgres") as pool:
        started = pool.submit(server.start)
        try:
            if meanwhile is not None:
                meanwhile()
            url = started.result()
        except BaseException:
            with suppress(BaseException):
                started.result()  # let it finish starting, so it can be stopped
            server.stop()
            raise
    try:
        yield url
    finally:
        server.stop()


def _load_settings() -> Settings:
    from pydantic import ValidationError

    from aigw.config import Settings, resolve_generated_secrets

    try:
        return resolve_generated_secrets(Settings())
    except ValidationError as exc:
        err.print(f"[red]invalid configuration:[/]\n{exc}")
        raise typer.Exit(2) from None


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
) -> None:
    """Migrate the database and serve the gateway (admin API, console, proxy)."""
    from aigw.db.revision import schema_is_current
    from aigw.logging import configure_logging
    from aigw.serving import run

    _refuse_busy_address(host, port)
    settings = _load_settings()
    configure_logging(settings.log_level, settings.log_format)
    # On a configured database the gateway serves from a fresh process image
    # (aigw.serving): this one would keep the command line's modules all along,
    # and each --workers child would import them again (as its main module).
    fresh_image = bool(settings.database_url)
    # One worker serving in this process: import the app while the database starts.
    preload = _import_app if workers == 1 and not fresh_image else None
    with database(settings, meanwhile=preload) as url:
        if not asyncio.run(schema_is_current(url)):
            _migrate_in_child(url)
        _refuse_unusable_key_ring(settings, url)
        # Workers re-read settings from the environment; the data folder gives
        # them the same generated secrets.
        os.environ["AIGW_DATABASE_URL"] = url
        os.environ["AIGW_DATA_DIR"] = str(settings.data_dir)
        _print_next_steps(host, port, settings)
        if fresh_image:
            _exec_serving(host, port, workers)
        run(settings, host, port, workers)


def _exec_serving(host: str, port: int, workers: int) -> None:
    """Replace this process with ``python -m aigw.serving`` (same pid, flags and
    environment, which now names the database and the data folder)."""
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [
        sys.executable,
        *subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined]
        "-m",
        "aigw.serving",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    os.execv(sys.executable, argv)  # noqa: S606  # nosec B606 - our own module, no shell


def _import_app() -> None:
    """What uvicorn imports by name (aigw.main), imported ahead of it."""
    import aigw.main  # noqa: F401


def _refuse_busy_address(host: str, port: int) -> None:
    """Bind *host*:*port* the way uvicorn will, and let go: when that fails, say so
    in one line and exit 2 before anything starts (no embedded PostgreSQL, no
    migration, no "ready" followed by a bind error)."""
    # uvicorn's own choice (Config.bind_socket): IPv6 when the host has a colon.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = "is already in use (another aigw serve, or another program)"
        elif exc.errno == errno.EACCES:
            why = "needs privileges this user lacks (ports below 1024)"
        else:
            why = f"cannot be bound: {exc.strerror or exc}"
        err.print(
            f"[red]cannot serve:[/] {host}:{port} {why}. Nothing was started; "
            "choose another port with --port (make serve: AIGW_PORT=8081 make serve)."
        )
        raise typer.Exit(2) from None


def _browsable(host: str) -> str:
    """The host part of a URL a browser on this machine can open."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104  # nosec B104 - a comparison, not a bind
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _print_next_steps(host: str, port: int, settings: Settings) -> None:
    """What a new user does next: open the console with the admin token, use the CLI."""
    from aigw.config import ADMIN_TOKEN_FILE

    base = f"http://{_browsable(host)}:{port}"
    if os.environ.get("AIGW_ADMIN_TOKEN"):
        where = "the value of AIGW_ADMIN_TOKEN"
    else:
        where = f"{settings.data_dir / ADMIN_TOKEN_FILE} (print it: aigw admin-token)"
    bin_dir = Path(sys.executable).parent
    lines = [
        f"console:     {base}/ui  (sign in with the admin token)",
        f"admin token: {where}",
        f"proxy:       {base}/v1  (OpenAI SDKs: base_url, with a key's client token)",
    ]
    on_path = shutil.which("aigw")
    if on_path is None or Path(on_path).parent.resolve() != bin_dir.resolve():
        shown = _relative(bin_dir)
        activate = bin_dir / "activate"
        how = f". {shown}/activate" if activate.exists() else f'export PATH="{bin_dir}:$PATH"'
        lines.append(f"CLI:         {shown}/aigw --help, or run `{how}` to put aigw on PATH")
    err.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _migrate_in_child(url: str) -> None:
    """``aigw migrate`` in a child process: alembic and its sync machinery never
    load into the process that goes on to serve (~12 MB less per worker)."""
    env = {**os.environ, "AIGW_DATABASE_URL": url}  # never argv: the URL may hold a password
    result = subprocess.run([sys.executable, "-m", "aigw.cli", "migrate"], env=env, check=False)
    if result.returncode != 0:
        err.print("[red]database migration failed[/]")
        raise typer.Exit(result.returncode)


def _refuse_unusable_key_ring(settings: Settings, url: str) -> None:
    """Stop here, in the parent and before any worker, when the key ring is malformed
    or cannot open the stored key codes: one clear line and exit 2. (Each worker's
    lifespan checks too, but with ``--workers`` > 1 uvicorn's supervisor exits 0
    after its children fail, and the message drowns in their tracebacks.)"""
    from rich.markup import escape

    from aigw.crypto import KeyRing, KeyRingConfigError
    from aigw.db.engine import create_engine, create_sessionmaker
    from aigw.secrets_check import KeyRingMismatch, verify_keyring_opens_stored_secrets

    assert settings.encryption_keys is not None
    try:
        keyring = KeyRing.parse(settings.encryption_keys.get_secret_value())
    except KeyRingConfigError as exc:
        err.print(f"[red]invalid AIGW_ENCRYPTION_KEYS:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None

    async def check() -> None:
        engine = create_engine(settings.model_copy(update={"database_url": url}))
        try:
            await verify_keyring_opens_stored_secrets(create_sessionmaker(engine), keyring)
        finally:
            await engine.dispose()

    try:
        asyncio.run(check())
    except KeyRingMismatch as exc:
        err.print(f"[red]refusing to start:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None


def migrate() -> None:
    """Bring the database schema up to date (alembic upgrade head)."""
    from aigw.db.migrate import upgrade

    settings = _load_settings()
    with database(settings) as url:
        upgrade(url)
    err.print("[green]database is up to date[/]")


def admin_token(
    path: Annotated[
        bool, typer.Option("--path", help="Print where the token is kept instead of the token.")
    ] = False,
) -> None:
    """Print the admin token for the console, the admin API and the CLI.

    The token comes from AIGW_ADMIN_TOKEN when that is set, else from the data
    folder (AIGW_DATA_DIR) where the first `aigw serve` generated it. Only the
    token goes to stdout, so this works: export AIGW_ADMIN_TOKEN=$(aigw admin-token)
    """
    from pydantic import ValidationError

    from aigw.config import ADMIN_TOKEN_FILE, Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        err.print(f"[red]invalid configuration:[/]\n{exc}")
        raise typer.Exit(2) from None
    file = settings.data_dir / ADMIN_TOKEN_FILE
    if path:
        if settings.admin_token is not None:
            err.print("note: AIGW_ADMIN_TOKEN is set; it wins over the file", highlight=False)
        typer.echo(str(file))
        return
    if settings.admin_token is not None:
        typer.echo(settings.admin_token.get_secret_value())
        return
    try:
        token = file.read_text().strip()
    except FileNotFoundError:
        token = ""
    except OSError as exc:
        err.print(f"[red]cannot read {file}:[/] {exc.strerror}", highlight=False)
        raise typer.Exit(1) from None
    if not token:
        err.print(
            f"no admin token in {file} yet: start the gateway once (make serve, or aigw serve), "
            "or set AIGW_ADMIN_TOKEN (and AIGW_DATA_DIR if the gateway uses another data folder)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    typer.echo(token)


def new_encryption_key() -> None:
    """Print a fresh kid:base64key entry for AIGW_ENCRYPTION_KEYS."""
    from aigw.config import new_encryption_key_entry

    typer.echo(new_encryption_key_entry())


def rotate_keys(
    generate: Annotated[
        bool,
        typer.Option(
            help="Put a newly generated key first in the data folder's key file "
            "(only when AIGW_ENCRYPTION_KEYS is not set)."
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
) -> None:
    """Re-encrypt every stored key code under the first (newest) encryption key.

    Resumable: run it again after an interruption and it continues.
    """
    from aigw.apikeys.rotation import (
        count_stale,
        count_stale_responses,
        reencrypt_key_codes,
        reseal_idempotent_responses,
    )
    from aigw.config import ENCRYPTION_KEYS_FILE, new_encryption_key_entry
    from aigw.crypto import KeyRing
    from aigw.db.engine import create_engine, create_sessionmaker

    settings = _load_settings()
    if generate:
        if os.environ.get("AIGW_ENCRYPTION_KEYS"):
            err.print("[red]--generate edits the key file; AIGW_ENCRYPTION_KEYS is set instead[/]")
            raise typer.Exit(2)
        path = settings.data_dir / ENCRYPTION_KEYS_FILE
        entries = [new_encryption_key_entry(), path.read_text().strip()]
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(",".join(entries) + "\n")
        os.replace(tmp, path)
        settings = _load_settings()
        err.print(f"new primary key added to {path}; restart gateways to pick it up")
    assert settings.encryption_keys is not None
    keyring = KeyRing.parse(settings.encryption_keys.get_secret_value())

    async def run(url: str) -> tuple[int, int]:
        engine = create_engine(settings.model_copy(update={"database_url": url}))
        try:
            sessionmaker = create_sessionmaker(engine)
            done = await reencrypt_key_codes(sessionmaker, keyring, batch_size=batch_size)
            await reseal_idempotent_responses(sessionmaker, keyring, batch_size=batch_size)
            left = await count_stale(sessionmaker, keyring)
            return done, left + await count_stale_responses(sessionmaker, keyring)
        finally:
            await engine.dispose()

    with database(settings) as url:
        done, left = asyncio.run(run(url))
    err.print(f"re-encrypted {done} key code(s) under key id {keyring.primary_kid!r}; {left} left")
    if left:
        sys.exit(1)
