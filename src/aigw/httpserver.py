"""The HTTP/1.1 protocol ``aigw serve`` runs under uvicorn: httptools, with a bound
on the request head.

uvicorn's httptools protocol puts no limit on the request line plus headers (its
h11 protocol stops at 16 KiB): before any authentication, every connection a
client opens could hold a header of any size in memory (three unfinished 64 MiB
headers grew a gateway by 196 MiB). This protocol answers 431 and closes the
connection once a request head passes :data:`MAX_HEAD_BYTES`.
"""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# nginx's default large_client_header_buffers is 4 x 8 KiB, Node's limit 16 KiB;
# bearer tokens and cookies from browsers fit with room to spare.
MAX_HEAD_BYTES = 64 * 1024

_PROBLEM = orjson.dumps(
    {
        "type": "urn:aigw:problem:request_header_too_large",
        "title": "Request header fields too large",
        "status": 431,
        "code": "request_header_too_large",
        "detail": f"the request line and headers exceed {MAX_HEAD_BYTES} bytes",
    }
)
_REFUSAL = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/problem+json\r\n"
    b"content-length: " + str(len(_PROBLEM)).encode() + b"\r\n"
    b"connection: close\r\n\r\n" + _PROBLEM
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools, refusing request heads over :data:`MAX_HEAD_BYTES` with 431."""

    _in_head = True  # a connection starts in the head of its first request
    _head_bytes = 0

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        # Counted after the parser has seen the bytes: a chunk that completes the
        # head (and carries body bytes) does not count against it.
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                # No response of an earlier (pipelined) request is being written.
                self.transport.write(_REFUSAL)
            self.transport.close()
