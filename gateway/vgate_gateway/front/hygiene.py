"""Request hygiene: headers a client must not control (log text a client must not shape: :mod:`vgate_gateway.logs`).

* Hop-by-hop headers, and every header the client names in ``Connection``, end at the gateway.
  The standard hop-by-hop ones stay in the ASGI scope (the server and framework frame the
  connection with them) and are dropped when the request is forwarded; the ones a client
  names in ``Connection`` are removed here, before anything reads them.
* ``X-Forwarded-For`` keeps what the client sent and gets the real peer appended, so the last
  entry is always an address the gateway saw.
* ``Forwarded``, ``X-Forwarded-Host``/``-Proto``/``-Port`` and ``X-Real-IP`` pass only from
  trusted proxies (``trusted_proxies``: CIDRs); from anyone else they are dropped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Headers only a proxy in front of the gateway may set.
FROM_PROXIES_ONLY = frozenset(
    {b"forwarded", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port", b"x-real-ip"}
)
# The server has already used these to frame the request; naming them in Connection changes nothing.
_FRAMING = frozenset({b"host", b"content-length"})


class TrustedProxies:
    """Peers whose forwarding headers are believed."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def __contains__(self, peer: str | None) -> bool:
        if not peer or not self._networks:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in net for net in self._networks)


def clean_headers(
    headers: Sequence[tuple[bytes, bytes]], peer: str | None, trusted: TrustedProxies
) -> Headers:
    """The request headers the gateway acts on and forwards (see the module docstring)."""
    named: set[bytes] = set()
    special = False  # any header this pass must look at: most requests have none
    for name, value in headers:
        if name in _SPECIAL:
            special = True
            if name == b"connection":
                named.update(t.strip().lower() for t in value.split(b","))
    forwarded_for: list[bytes] = []
    if special:
        named -= _NOT_NAMEABLE
        from_proxy = peer in trusted
        out: Headers = []
        for name, value in headers:
            if name in named:
                continue
            if name == b"x-forwarded-for":
                forwarded_for.append(value.strip())
                continue
            if name in FROM_PROXIES_ONLY and not from_proxy:
                continue
            out.append((name, value))
    else:
        out = list(headers)
    if peer:
        forwarded_for.append(peer.encode("latin-1"))
    if forwarded_for:
        out.append((b"x-forwarded-for", b", ".join(v for v in forwarded_for if v)))
    return out


#: Headers whose presence makes :func:`clean_headers` look closer.
_SPECIAL = FROM_PROXIES_ONLY | {b"connection", b"x-forwarded-for"}
_NOT_NAMEABLE = _FRAMING | HOP_BY_HOP
