"""The bundled encodings (aigw.proxy.counting.encodings): the model rule,
offline loading equal to tiktoken's own, the hash check, and lazy loading off
the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
from pathlib import Path

import pytest
import tiktoken
import tiktoken.registry

import aigw.encodings
from aigw.proxy.counting import Encoders, count_chat_input, encodings, load_encoding
from tests.proxy.counting.published import COOKBOOK_TOOL_MESSAGES, COOKBOOK_TOOLS
from tests.proxy.counting.shared import encoders_fixture  # noqa: F401  (the fixture encoders)
from tests.proxy.counting.support import ticks_during

ENCODINGS_DIR = Path(aigw.encodings.__file__).parent


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("GPT-4-0613", "cl100k_base"),
        ("llama-3.1-8b-instruct", "o200k_base"),
    ],
)
def test_encoding_for_model(encoders: Encoders, model: str, encoding: str) -> None:
    # SPEC §1: GPT-4o/4.1/o-series/GPT-5 use o200k_base, GPT-4/3.5 cl100k_base,
    # anything else o200k_base.
    assert encoders.for_model(model).name == encoding


def test_configured_encoding_wins_over_the_model_rule(encoders: Encoders) -> None:
    assert encoders.for_model("gpt-4o", "cl100k_base").name == "cl100k_base"


def test_max_token_length_bounds_chars_per_token(encoders: Encoders) -> None:
    for name in encoders.names:
        values = encoders.get(name).token_byte_values()
        assert max(map(len, values)) == encodings.MAX_TOKEN_BYTES


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_counting_works_with_the_network_disabled(
    no_network: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(OSError, match="network disabled"):
        socket.create_connection(("openaipublic.blob.core.windows.net", 443))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    loaded = Encoders.load()
    try:
        body = {"model": "gpt-4o", "messages": COOKBOOK_TOOL_MESSAGES, "tools": COOKBOOK_TOOLS}
        # The cookbook's published prompt_tokens for its weather-tool example.
        assert count_chat_input(body, loaded.for_model("gpt-4o")) == 101
        assert count_chat_input(body, loaded.for_model("gpt-4")) == 105
    finally:
        loaded.close()


# tiktoken caches downloads under the SHA-1 of their URL (see
# /work/shared/tiktoken/README.md); with the files there it never downloads.
TIKTOKEN_CACHE_NAMES = {
    "cl100k_base": "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
    "o200k_base": "fb374d419588a4632f3f557e76b4b70aebbca790",
}


@pytest.mark.parametrize("name", TIKTOKEN_CACHE_NAMES)
def test_bundled_encoding_equals_tiktokens_own(
    encoders: Encoders, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    shutil.copy(ENCODINGS_DIR / f"{name}.tiktoken", tmp_path / TIKTOKEN_CACHE_NAMES[name])
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    reference = tiktoken.get_encoding(name)
    ours = encoders.get(name)
    assert ours._pat_str == reference._pat_str
    assert ours._special_tokens == reference._special_tokens
    # The ranks as parsed, and as the loaded encoder holds them (every token's bytes).
    parsed = encodings._parse_tiktoken_bpe((ENCODINGS_DIR / f"{name}.tiktoken").read_bytes())
    assert parsed == reference._mergeable_ranks
    assert ours.n_vocab == reference.n_vocab
    assert all(ours.decode_single_token_bytes(rank) == token for token, rank in parsed.items())
    sample = "Hello, 世界! 123456 don't <|endoftext|>\n\n\tcode() {}"
    assert ours.encode(sample, allowed_special="all") == reference.encode(
        sample, allowed_special="all"
    )


def test_bundled_files_are_the_published_ones() -> None:
    for name, spec in encodings._SPECS.items():
        digest = hashlib.sha256((ENCODINGS_DIR / spec.filename).read_bytes()).hexdigest()
        assert digest == spec.sha256, name


def test_loads_when_tiktokens_cache_dir_is_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoders: Encoders
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(blocker / "cache"))
    loaded = load_encoding("cl100k_base")
    # A loaded encoding keeps no Python copy of its ranks (both would compare as
    # empty dicts): the ids come from OpenAI's cookbook ("How to count tokens with
    # tiktoken"), and the vocabulary's size from the encoding's published file.
    assert loaded.encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert loaded.n_vocab == encoders.get("cl100k_base").n_vocab == 100_277


def test_a_tampered_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    data = (ENCODINGS_DIR / "cl100k_base.tiktoken").read_bytes()
    (tmp_path / "cl100k_base.tiktoken").write_bytes(data.replace(b" 100\n", b" 101\n", 1))
    with pytest.raises(ValueError, match="hash mismatch"):
        load_encoding("cl100k_base", tmp_path)


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        load_encoding("p50k_base")


async def test_encodings_load_on_first_use_once_and_off_the_loop() -> None:
    loads: list[str] = []

    def loader(name: str) -> tiktoken.Encoding:
        loads.append(name)
        return load_encoding(name)

    lazy = Encoders({}, loader=loader)
    try:
        assert lazy.names == ()
        first, second = await asyncio.gather(lazy.aget("cl100k_base"), lazy.aget("cl100k_base"))
        assert first is second
        assert loads == ["cl100k_base"]  # concurrent first uses shared one load
        assert await lazy.aget("cl100k_base") is first
        assert lazy.names == ("cl100k_base",)
        assert len(first.encode_ordinary("hello world")) == 2
        with pytest.raises(KeyError):
            await lazy.aget("p50k_base")
        assert await ticks_during(lambda: lazy.aget("o200k_base")) >= 10
    finally:
        lazy.close()


async def test_a_failed_load_can_be_retried() -> None:
    attempts = 0

    def flaky(name: str) -> tiktoken.Encoding:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise OSError("disk hiccup")
        return load_encoding(name)

    lazy = Encoders({}, loader=flaky)
    try:
        with pytest.raises(OSError):
            await lazy.aget("o200k_base")
        assert (await lazy.aget("o200k_base")).name == "o200k_base"
    finally:
        lazy.close()


async def test_a_process_builds_each_encoding_once_and_on_the_loops_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 15: tiktoken's constructor holds the GIL throughout, so a thread would not
    # spare the loop; on the loop's thread the encoding's tables sit in the main
    # malloc arena, whose freed pages the startup's malloc_trim returns (~4 MB of
    # idle RSS). Reading and parsing the file still runs in a thread.
    import threading

    built_on: list[int] = []
    real_init = tiktoken.Encoding.__init__

    def spy(self: tiktoken.Encoding, *args: object, **kwargs: object) -> None:
        built_on.append(threading.get_ident())
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tiktoken.Encoding, "__init__", spy)
    monkeypatch.setattr(encodings, "_SHARED", {}, raising=False)  # none built yet
    one, other = Encoders({}), Encoders({})
    try:
        ticks = await ticks_during(lambda: one.aget("cl100k_base"))
        assert await other.aget("cl100k_base") is await one.aget("cl100k_base")
        assert built_on == [threading.get_ident()]
        assert ticks >= 1  # the file's parse left the loop running
    finally:
        one.close()
        other.close()
