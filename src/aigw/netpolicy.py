"""Which upstream addresses a provider ``base_url`` may point at.

Link-local and cloud-metadata addresses are refused always (they are how a
gateway gets turned against its own cloud credentials). Loopback and private
ranges are allowed only when ``AIGW_ALLOW_PRIVATE_UPSTREAMS`` is true, because
local model servers (vLLM, Ollama) are a real use.

Only literal addresses and well-known names are judged here; hostnames are not
resolved at validation time (that would block and could change later).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

_METADATA_HOSTS = {
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
}
_METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("169.254.170.2"),
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),
}
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class UpstreamRefused(OSError, ValueError):
    """The URL points at an address this gateway will not call.

    An ``OSError`` too (like ``io.UnsupportedOperation``) because the proxy raises it
    from its aiohttp resolver at connect time, and aiohttp wraps only ``OSError``s
    into ``ClientConnectorError``; anything else escapes its error mapping."""


def _literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # Legacy IPv4 spellings that resolvers still accept: 2852039166, 0xa9.0xfe.0xa9.0xfe.
        if host and all(ch in "0123456789abcdefx." for ch in host.lower()):
            try:
                return ipaddress.IPv4Address(socket.inet_aton(host))
            except OSError:
                return None
        return None
    if isinstance(address, ipaddress.IPv6Address):
        # IPv4 carried inside IPv6 is judged as that IPv4 address (::ffff:a.b.c.d, and
        # 6to4 2002:AABB:CCDD:: which some networks still route).
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return embedded
    return address


def check_upstream_url(url: str, *, allow_private: bool) -> None:
    """Raise :class:`UpstreamRefused` when *url* must not be used as an upstream."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if not host:
        raise UpstreamRefused("the URL has no host")
    if host in _METADATA_HOSTS:
        raise UpstreamRefused("cloud metadata endpoints are never allowed")
    address = _literal_address(host.strip("[]"))
    if address is None:
        if (host in _LOCAL_NAMES or host.endswith(".localhost")) and not allow_private:
            raise UpstreamRefused("loopback upstreams are disabled (AIGW_ALLOW_PRIVATE_UPSTREAMS)")
        return
    if address in _METADATA_ADDRESSES:
        raise UpstreamRefused("cloud metadata endpoints are never allowed")
    if address.is_link_local:
        raise UpstreamRefused("link-local addresses are never allowed")
    # ::1 sits in IPv6's reserved ::/8 but is loopback, governed by the setting below.
    if (
        address.is_unspecified
        or address.is_multicast
        or (address.is_reserved and not address.is_loopback)
    ):
        raise UpstreamRefused("this address cannot be an upstream")
    if (address.is_loopback or address.is_private or address in _CGNAT) and not allow_private:
        raise UpstreamRefused(
            "private and loopback upstreams are disabled (AIGW_ALLOW_PRIVATE_UPSTREAMS)"
        )


_CGNAT = ipaddress.ip_network("100.64.0.0/10")
