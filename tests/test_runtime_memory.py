"""What keeps an idle worker's memory down (issue 15), each saving checked where it is made."""

from __future__ import annotations

from pathlib import Path

from tests.support import Gateway

# aigw's command line; click stays, uvicorn imports it.
COMMAND_LINE_PACKAGES = {"typer", "rich", "shellingham"}


async def test_a_loaded_encoding_holds_no_python_copy_of_its_ranks() -> None:
    # tiktoken's Rust core copies the ranks; the Python dict of ~100k-200k bytes
    # objects it also kept (~20 MB for cl100k_base, as tiktoken.get_encoding keeps it)
    # is dropped once the encoding is built, whichever way a gateway loads it.
    from aigw.proxy.counting.encodings import Encoders, load_encoding

    lazy = Encoders({})
    try:
        served = await lazy.aget("cl100k_base")  # as a running gateway loads it
    finally:
        lazy.close()
    for encoding in (served, load_encoding("cl100k_base")):
        assert encoding._mergeable_ranks == {}
        # ... and it still encodes and decodes every rank from its own tables.
        assert encoding.n_vocab == 100_277
        assert encoding.decode(encoding.encode("Hello, world")) == "Hello, world"
        assert encoding.decode_single_token_bytes(100_255) != b""


def test_serve_on_a_configured_database_serves_from_an_image_without_the_command_line(
    gateway_process: Gateway,
) -> None:
    # `aigw serve` with AIGW_DATABASE_URL execs `python -m aigw.serving` after its
    # checks: the same pid serves, without typer and rich (~3 MB), and --workers
    # children spawned from it import aigw.serving as their main module, not them.
    import subprocess
    import sys

    cmdline = (
        Path(f"/proc/{gateway_process.proc.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    )
    assert cmdline[cmdline.index(b"aigw.serving") - 1] == b"-m", cmdline
    with gateway_process.admin() as admin:
        assert admin.get("/readyz").status_code == 200
    # What that image imports, in a fresh interpreter: the app, uvicorn and its protocol.
    probe = (
        "import sys, aigw.serving, aigw.main, aigw.drain, uvicorn.config\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert {"aigw", "uvicorn", "fastapi"} <= loaded, out.stdout  # the probe saw a gateway
    assert sorted(loaded & COMMAND_LINE_PACKAGES) == []
    # ... which `aigw serve` itself holds (what the exec leaves behind).
    out = subprocess.run(
        [sys.executable, "-c", "import sys, aigw.cli.server; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert all(f"'{name}'" in out.stdout for name in COMMAND_LINE_PACKAGES)
