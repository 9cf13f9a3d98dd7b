"""Running the app under uvicorn, the last step of ``aigw serve``.

``aigw serve`` on a configured database (``AIGW_DATABASE_URL``) does its checks,
then replaces its process image with ``python -m aigw.serving``: the same pid
serves (or supervises ``--workers``), from a process that never imported the
command line (typer, rich and the checks' leftovers: ~3 MB of the worker's idle
RSS, issue 15); the workers it spawns import this module as their main one, not
the ``aigw`` script (which would load the command line into each of them). With
the embedded PostgreSQL the command line's process serves, as it must stop that
server on the way out. Either way :func:`run` serves, with the same options; the
settings are read again from the environment (as ``--workers`` children read
them), which the command line completed with the database URL and the data
folder holding the generated secrets.
"""

from __future__ import annotations

import argparse
import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

    from aigw.config import Settings

APP = "aigw.main:create_app"


def uvicorn_options(settings: Settings, host: str, port: int, workers: int) -> dict[str, Any]:
    """uvicorn's options for ``aigw serve`` (one worker or several)."""
    from aigw.httpserver import server_options

    return dict(
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace),
        **server_options(settings.keepalive_timeout),
    )


def exit_after_shutdown(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def run(settings: Settings, host: str, port: int, workers: int = 1) -> None:
    """Serve the app in this process (one worker), or supervise *workers* worker
    processes, until SIGINT or SIGTERM."""
    import uvicorn

    # uvicorn shuts down gracefully on SIGINT/SIGTERM (its supervisor: its workers)
    # and then re-raises the signal to the handler installed before it; make that
    # handler a clean exit (so the embedded PostgreSQL of ``aigw serve`` is
    # stopped on the way out).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, exit_after_shutdown)
    options = uvicorn_options(settings, host, port, workers)
    if workers > 1:
        # Several workers share one socket under uvicorn's supervisor, where the
        # balancer or preStop drains (aigw.drain: one worker only).
        _serve_workers(uvicorn.Config(APP, **options), host, port)
    elif settings.shutdown_drain > 0:
        # Not ready first, then close (aigw.drain).
        from aigw.drain import DrainingServer

        DrainingServer(uvicorn.Config(APP, **options), settings.shutdown_drain).run()
    else:
        uvicorn.run(APP, **options)


def _serve_workers(config: uvicorn.Config, host: str, port: int) -> None:
    """uvicorn's supervisor, each worker on a socket of its own (aigw.listeners)."""
    import logging

    from uvicorn.supervisors import Multiprocess

    from aigw.listeners import PerWorkerSocket

    where = f"[{host}]" if ":" in host else host
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", where, port
    )
    # A stand-in for a socket: each worker unpickles it as the socket it binds.
    Multiprocess(config, sockets=[PerWorkerSocket(host, port)]).run()  # type: ignore[list-item]


def main(argv: list[str] | None = None) -> None:
    """``python -m aigw.serving --host H --port P --workers N``, as ``aigw serve`` execs it."""
    from aigw.config import Settings, resolve_generated_secrets
    from aigw.logging import configure_logging

    parser = argparse.ArgumentParser(prog="python -m aigw.serving")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    settings = resolve_generated_secrets(Settings())
    configure_logging(settings.log_level, settings.log_format)
    run(settings, args.host, args.port, args.workers)


if __name__ == "__main__":
    main()
