"""Fake upstream servers for end-to-end tests and benchmarks, run as real
processes and stopped by pid.

* :func:`start_fake_upstream` — the scriptable fake in :mod:`tests.fakes.upstream`
  (see its docstring for the scenario knobs and control routes).
* :func:`start_xpyd_sim` — ``xpyd-sim``, an independently written
  OpenAI-compatible simulator, as a second opinion on the gateway's protocol
  handling.

Both return a handle with ``.url`` (``http://127.0.0.1:PORT/v1``, what an
OpenAI SDK or a provider's ``base_url`` takes) and ``.stop()``; both are
context managers. This module does not import the servers, so test processes
stay light.

The fakes follow the provider's published wire format and their own simple
rules, and import nothing from aigw, so a test comparing the gateway with
what a fake billed compares two independent implementations. The scriptable
fake's token rules (:mod:`tests.fakes.billing`):

* encodings: tiktoken's own ``cl100k_base`` / ``o200k_base``, built by
  tiktoken from the files in ``src/aigw/encodings`` read by path; the model
  picks one by tiktoken's model table (``o200k_base`` when it is not there);
* ``prompt_tokens``: OpenAI's cookbook formula — 3 per message + the tokens
  of each string field (text parts of a list content) + 1 per ``name`` + 3
  priming the reply; tools, images and tool calls are billed nothing;
* ``completion_tokens``: the tokens generated, one at a time, up to the
  request's ``max_completion_tokens`` / ``max_tokens``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

__all__ = ["FakeUpstream", "XpydSim", "start_fake_upstream", "start_xpyd_sim"]

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_PREFIX = "FAKE_UPSTREAM_READY "  # printed by tests.fakes.upstream once listening


@dataclass
class _Process:
    """A server child process, logging to a file, stopped by its pid."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after *timeout*; idempotent."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.process.wait(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _spawn(argv: list[str], name: str) -> _Process:
    log_fd, log_name = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
    try:
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_fd,
            start_new_session=True,  # a Ctrl-C in the test run is not sent to it twice
        )
    finally:
        os.close(log_fd)
    return _Process(process, Path(log_name))


@dataclass
class FakeUpstream:
    """A running :mod:`tests.fakes.upstream` process and its control API."""

    url: str  # http://HOST:PORT/v1
    _proc: _Process = field(repr=False)
    _http: httpx.Client | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def root(self) -> str:
        """The URL without ``/v1``."""
        return self.url.removesuffix("/v1")

    @property
    def log_path(self) -> Path:
        return self._proc.log_path

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        if self._http is None:
            # One client for every control call: ``httpx.request`` built one per call,
            # and with it a TLS context (~25 ms of CPU loading the CA file). Still a
            # connection per call, as before (the fake counts open connections).
            self._http = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))
        response = self._http.request(method, f"{self.root}/_control/{path}", json=body)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        """Counters: requests, chat_requests, in_flight, streams_open,
        connections_open, completed, client_disconnects, resets, errors, and
        last_request ({method, path, headers, body, received_at})."""
        return dict(self._control("GET", "stats"))

    def requests(self) -> list[dict[str, Any]]:
        """The last 100 chat requests received, oldest first."""
        return list(self._control("GET", "requests"))

    def last_request(self) -> dict[str, Any] | None:
        return self.stats()["last_request"]

    def set_scenario(self, **knobs: Any) -> dict[str, Any]:
        """Replace the default scenario (per-request scenarios still apply)."""
        return dict(self._control("POST", "scenario", knobs))

    def reset(self) -> None:
        """Zero the counters, forget requests, restore the start-up scenario."""
        self._control("POST", "reset")

    def wait_until(self, timeout: float = 2.0, **expected: int) -> dict[str, Any]:
        """Poll the stats until every ``name=value`` holds (e.g. ``in_flight=0,
        client_disconnects=1``); return them, or raise ``AssertionError``."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if all(stats.get(name) == value for name, value in expected.items()):
                return stats
            if time.monotonic() >= deadline:
                raise AssertionError(f"fake upstream stats never reached {expected}: {stats}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._proc.stop()
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_fake_upstream(
    scenario: dict[str, Any] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    models: tuple[str, ...] | None = None,
    require_key: str | None = None,
    timeout: float = 30.0,
) -> FakeUpstream:
    """Start ``python -m tests.fakes.upstream`` and wait until it listens.

    *scenario* is the default scenario (a dict of knobs); *port* 0 picks a
    free one. Stop it with ``.stop()`` or a ``with`` block.
    """
    argv = [sys.executable, "-m", "tests.fakes.upstream", "--host", host, "--port", str(port)]
    if scenario:
        argv += ["--scenario", json.dumps(scenario)]
    if models:
        argv += ["--models", ",".join(models)]
    if require_key is not None:
        argv += ["--require-key", require_key]
    proc = _spawn(argv, "fake-upstream")
    try:
        url = _read_ready_line(proc, timeout)
    except BaseException:
        proc.stop()
        raise
    return FakeUpstream(url, proc)


def _read_ready_line(proc: _Process, timeout: float) -> str:
    stdout = proc.process.stdout
    assert stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"fake upstream not ready in {timeout}s; log:\n{proc.log()}")
        ready, _, _ = select.select([stdout], [], [], remaining)
        if ready:
            data = os.read(stdout.fileno(), 4096)
            if not data:
                proc.process.wait(1)
                raise RuntimeError(
                    f"fake upstream exited ({proc.process.returncode}):\n{proc.log()}"
                )
            buffer += data
    line = buffer.split(b"\n", 1)[0].decode()
    if not line.startswith(READY_PREFIX):
        raise RuntimeError(f"unexpected fake upstream output {line!r}; log:\n{proc.log()}")
    return line.removeprefix(READY_PREFIX).strip()


@dataclass
class XpydSim:
    """A running ``xpyd-sim`` process."""

    url: str  # http://HOST:PORT/v1
    model: str
    _proc: _Process = field(repr=False)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        return self._proc.log_path

    def stop(self) -> None:
        self._proc.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_xpyd_sim(
    *,
    model: str = "gpt-4o-mini",
    host: str = "127.0.0.1",
    decode_delay_ms: float = 0.0,
    prefill_delay_ms: float = 0.0,
    require_key: str | None = None,
    timeout: float = 30.0,
) -> XpydSim:
    """Start ``xpyd-sim`` (PyPI ``xpyd-sim`` 0.5) on a free port.

    It runs as::

        xpyd-sim serve --mode dual --host HOST --port PORT --model MODEL
            --prefill-delay-ms 0 --kv-transfer-delay-ms 0
            --decode-delay-per-token-ms D --eos-min-ratio 1.0 [--require-api-key KEY]

    What it does, from its source (``xpyd_sim/server.py``):

    * ``POST /v1/chat/completions`` streams when asked and sends a final
      ``usage`` chunk (``"choices": []``) when the request has
      ``stream_options: {"include_usage": true}`` — no flag needed; it also
      serves ``GET /v1/models`` (the one ``--model``), ``/v1/completions``,
      ``/v1/embeddings`` and ``GET /health``.
    * Output is words of "The quick brown fox jumps over the lazy dog.",
      one per chunk, ``max_completion_tokens``/``max_tokens`` of them
      (default 16). ``--eos-min-ratio 1.0`` makes the length exactly that
      (below 1 it stops at a random length, for realism); ``ignore_eos`` in
      the body has the same effect per request.
    * Its usage is its own: ``prompt_tokens`` is characters / 4 and
      ``completion_tokens`` the number of words, not tiktoken counts; a
      gateway must not assume an upstream's figures equal its own.
    * It answers whatever ``model`` the request names, with ``--model`` in
      the response; ``--require-api-key`` makes it demand ``Bearer KEY``.
    """
    port = _free_port(host)
    binary = Path(sys.executable).with_name("xpyd-sim")
    argv = [
        str(binary),
        "serve",
        "--mode", "dual",
        "--host", host,
        "--port", str(port),
        "--model", model,
        "--prefill-delay-ms", str(prefill_delay_ms),
        "--kv-transfer-delay-ms", "0",
        "--decode-delay-per-token-ms", str(decode_delay_ms),
        "--eos-min-ratio", "1.0",
    ]  # fmt: skip
    if require_key is not None:
        argv += ["--require-api-key", require_key]
    proc = _spawn(argv, "xpyd-sim")
    root = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.process.poll() is not None:
                raise RuntimeError(f"xpyd-sim exited ({proc.process.returncode}):\n{proc.log()}")
            try:
                if httpx.get(f"{root}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"xpyd-sim not ready in {timeout}s; log:\n{proc.log()}")
            time.sleep(0.05)
    except BaseException:
        proc.stop()
        raise
    return XpydSim(f"{root}/v1", model, proc)
