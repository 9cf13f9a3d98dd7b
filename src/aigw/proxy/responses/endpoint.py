"""``POST /v1/responses`` as an :class:`aigw.proxy.exchange.Endpoint`."""

from __future__ import annotations

from typing import Any

from aigw.proxy.downstream import Downstream
from aigw.proxy.exchange import Prepared
from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.responses.admission import ResponsesAdmission
from aigw.proxy.responses.relay import ResponsesRelay
from aigw.proxy.upstream import UpstreamClock
from aigw.usage.entry import UsageEntry


class ResponsesEndpoint(ResponsesAdmission):
    name = "responses"
    path = "/responses"

    def relay(
        self,
        prepared: Prepared,
        key: ResolvedKey,
        entry: UsageEntry,
        downstream: Downstream,
        clock: UpstreamClock,
        encoding: Any,
    ) -> ResponsesRelay:
        return ResponsesRelay(prepared, key, entry, downstream, clock, encoding)
