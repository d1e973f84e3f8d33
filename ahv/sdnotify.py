"""systemd's readiness protocol (`Type=notify`), without a dependency: a datagram to the
socket named in $NOTIFY_SOCKET. Outside systemd the variable is unset and this does nothing."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send e.g. "READY=1" or "STOPPING=1"; returns whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket name
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", address, exc)
        return False
    return True
