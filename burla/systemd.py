"""sd_notify over NOTIFY_SOCKET (READY=1, WATCHDOG=1, STATUS=...); a no-op when unset.

Tests use the same path to learn when a daemon is ready, so readiness is never guessed.
"""

from __future__ import annotations

import os
import socket

# Send WATCHDOG=1 this often relative to WATCHDOG_USEC (systemd advises at least twice per period).
WATCHDOG_FRACTION = 0.4


def notify(**fields: str) -> bool:
    """Send `KEY=value` lines to the service manager; False when there is none to tell."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    payload = "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(payload, address)
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings systemd expects, or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit():
        return None
    return int(usec) / 1_000_000 * WATCHDOG_FRACTION
