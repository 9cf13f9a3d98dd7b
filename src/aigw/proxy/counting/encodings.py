"""The bundled tiktoken encodings, loaded offline, and the per-process set of them.

Encodings are built once by :meth:`Encoders.load` from the ``.tiktoken``
files in ``aigw/encodings`` (the exact files tiktoken downloads, checked
against the same SHA-256, with the same regex and special tokens as tiktoken's
``openai_public.py``), so counting never touches the network. Which encoding
a model counts with is :func:`aigw.encodings.encoding_for_model` (SPEC §1).
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

import tiktoken

from aigw.encodings import CL100K_BASE, O200K_BASE, encoding_for_model

__all__ = ["MAX_TOKEN_BYTES", "Encoders", "load_encoding"]

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"


@dataclass(frozen=True, slots=True)
class _EncodingSpec:
    filename: str
    sha256: str
    pat_str: str
    special_tokens: Mapping[str, int]


# Pattern strings and special tokens as in tiktoken's tiktoken_ext/openai_public.py;
# the hashes are its expected_hash values (the files are the ones it downloads).
_SPECS: Final[Mapping[str, _EncodingSpec]] = {
    CL100K_BASE: _EncodingSpec(
        filename="cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=(
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
            r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
        ),
        special_tokens={
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
    O200K_BASE: _EncodingSpec(
        filename="o200k_base.tiktoken",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
}

# The longest token of each encoding, in bytes (checked by a test): a text of
# c characters (>= c bytes) is at least ceil(c / 128) tokens.
MAX_TOKEN_BYTES: Final = 128


def _encodings_dir() -> Path:
    return Path(str(resources.files("aigw") / "encodings"))


def _parse_tiktoken_bpe(data: bytes) -> dict[bytes, int]:
    # The format tiktoken.load.load_tiktoken_bpe reads: "<base64 token> <rank>" lines.
    # Split once and decoded by map() rather than line by line: 0.18 s of CPU for
    # o200k_base instead of 0.32 s, paid at each gateway start that counts with it
    # (issue 15). The hash was checked first, so the fields pair up.
    fields = data.split()
    if len(fields) % 2:
        raise ValueError("a .tiktoken file holds '<base64 token> <rank>' lines")
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))


def load_encoding(name: str, directory: Path | None = None) -> tiktoken.Encoding:
    """Build the named encoding (``cl100k_base`` or ``o200k_base``) from the
    bundled file, after checking its SHA-256. Never downloads.

    The file is read and parsed here rather than through
    ``tiktoken.load.load_tiktoken_bpe``, which skips the hash check when
    tiktoken's cache is disabled (``TIKTOKEN_CACHE_DIR=""``), copies the file
    into that cache otherwise, and fails when the cache folder is not
    writable. The format and the resulting ranks are the same (a test
    compares them with tiktoken's own loader).
    """
    spec, ranks = _read_ranks(name, directory)
    return _build(name, spec, ranks)


def _read_ranks(name: str, directory: Path | None = None) -> tuple[_EncodingSpec, dict[bytes, int]]:
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown encoding {name!r}; bundled: {', '.join(_SPECS)}")
    path = (directory or _encodings_dir()) / spec.filename
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        raise ValueError(f"{path}: hash mismatch, expected SHA-256 {spec.sha256}")
    return spec, _parse_tiktoken_bpe(data)


def _build(name: str, spec: _EncodingSpec, ranks: dict[bytes, int]) -> tiktoken.Encoding:
    encoding = tiktoken.Encoding(
        name,
        pat_str=spec.pat_str,
        mergeable_ranks=ranks,
        special_tokens=dict(spec.special_tokens),
    )
    # The Rust core holds its own copy of the ranks; the Python dict is kept only
    # for pickling an Encoding by value, which aigw never does. Dropping it saves
    # ~40 MB per process (both encodings).
    encoding._mergeable_ranks = {}
    return encoding


# The encodings :class:`Encoders` built in this process, shared: they are
# immutable, and an app built twice in one process (as tests do) parses them once.
_SHARED: dict[str, tiktoken.Encoding] = {}


async def _load_shared(name: str) -> tiktoken.Encoding:
    encoding = _SHARED.get(name)
    if encoding is not None:
        return encoding
    # Reading and parsing the file is Python that yields the GIL: in a thread, the
    # loop keeps serving. tiktoken's constructor holds the GIL throughout (a thread
    # would stall the loop all the same), so it runs on the loop's own thread: its
    # tables (~42 MB for o200k_base) then sit in the main malloc arena, where the
    # startup's malloc_trim returns the parse's garbage to the system (~4 MB less
    # idle RSS than a thread's arena; issue 15).
    spec, ranks = await asyncio.to_thread(_read_ranks, name)
    encoding = _SHARED.get(name)
    if encoding is None:
        encoding = _SHARED[name] = _build(name, spec, ranks)
    return encoding


class Encoders:
    """The bundled encodings of a process, each built once.

    Holds one :class:`tiktoken.Encoding` per loaded name and a small thread
    pool for tokenizing large prompts off the event loop (kept apart from the
    loop's default executor, which also resolves DNS for upstream calls).
    Thread-safe: encodings are immutable and tiktoken encodes concurrently.

    An encoding may also be loaded on first use (:meth:`aget`): a process then
    holds only the encodings its models count with (o200k_base takes ~45 MB,
    cl100k_base ~22 MB). Without a *loader*, those are built once per process
    and shared by every :class:`Encoders` of it.
    """

    __slots__ = ("_encodings", "_executor", "_loader", "_loading")

    def __init__(
        self,
        encodings: Mapping[str, tiktoken.Encoding],
        *,
        offload_workers: int = 2,
        loader: Callable[[str], tiktoken.Encoding] | None = None,
    ) -> None:
        self._encodings = dict(encodings)
        self._executor = ThreadPoolExecutor(
            max_workers=offload_workers, thread_name_prefix="aigw-tokenize"
        )
        self._loader = loader
        self._loading: dict[str, asyncio.Future[tiktoken.Encoding]] = {}

    async def aget(self, name: str) -> tiktoken.Encoding:
        """The encoding called *name*, loaded off the event loop on first use
        (concurrent first uses share one load); ``KeyError`` when not bundled."""
        encoding = self._encodings.get(name)
        if encoding is not None:
            return encoding
        if name not in _SPECS:
            raise KeyError(name)
        loading = self._loading.get(name)
        if loading is None:
            if self._loader is None:
                loading = asyncio.ensure_future(_load_shared(name))
            else:
                loading = asyncio.ensure_future(asyncio.to_thread(self._loader, name))
            self._loading[name] = loading
        try:
            encoding = await asyncio.shield(loading)
        finally:
            if loading.done():
                self._loading.pop(name, None)
        self._encodings[name] = encoding
        return encoding

    async def preload(self, names: set[str]) -> None:
        """Load the bundled encodings among *names* not loaded yet, off the event loop
        (the key cache calls this before it serves keys that count with them)."""
        for name in sorted(names):
            if name in _SPECS and name not in self._encodings:
                await self.aget(name)

    @classmethod
    def load(cls, directory: Path | None = None, *, offload_workers: int = 2) -> Encoders:
        """Load every bundled encoding (about a second of CPU; do it once)."""
        return cls(
            {name: load_encoding(name, directory) for name in _SPECS},
            offload_workers=offload_workers,
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._encodings)

    @property
    def executor(self) -> Executor:
        """Where :func:`~aigw.proxy.counting.prompt.count_chat_input_async` should tokenize large prompts."""
        return self._executor

    def get(self, name: str) -> tiktoken.Encoding:
        """The encoding called *name*; ``KeyError`` when it is not bundled."""
        return self._encodings[name]

    def for_model(self, model: str, encoding: str | None = None) -> tiktoken.Encoding:
        """The encoding for *model*: *encoding* when configured, else by name."""
        return self._encodings[encoding or encoding_for_model(model)]

    def close(self) -> None:
        """Stop the tokenizer threads (waits for running jobs)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
