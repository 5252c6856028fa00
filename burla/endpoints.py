"""Endpoints as people write them (`tcp://HOST:PORT`), checked before any socket sees them.

ZeroMQ takes a port past 65535 modulo 65536 and `-1` as 65535, so a typo would listen or dial
somewhere else in silence; a value that is no URL at all fails deep inside a daemon's start.
"""

from __future__ import annotations

import re

MAX_PORT = 65535
# tcp://HOST:PORT, where HOST is a name, an IPv4 address, `*`, or an IPv6 address in brackets.
_TCP = re.compile(r"tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.*-]+):(?P<port>-?\d+)")


class BadEndpoint(ValueError):
    """An endpoint flag is not `tcp://HOST:PORT` with a port in range: fix the flag."""


def check(value: str, *, bind: bool) -> str:
    """`value` unchanged if it is a usable endpoint; BadEndpoint naming it otherwise.

    `bind`: the endpoint is listened on, so port 0 (any free port) is allowed too.
    """
    lowest = 0 if bind else 1
    example = "tcp://0.0.0.0:7700" if bind else "tcp://10.0.0.2:7700"
    found = _TCP.fullmatch(value)
    if found is None:
        raise BadEndpoint(f"{value[:200]!r} is not an endpoint: expected tcp://HOST:PORT, "
                          f"for example {example}")
    port = int(found.group("port"))
    if not lowest <= port <= MAX_PORT:
        zero = " (0: any free port)" if bind else ""
        raise BadEndpoint(f"port {port} in {value!r} is out of range: use {lowest}-{MAX_PORT}"
                          f"{zero}")
    return value
