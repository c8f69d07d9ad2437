"""The listening socket, bound before uvicorn starts and before the model loads (standard library only).

So a port in use is one UserError line at once (uvicorn would log and exit, after seconds of
loading), port 0 gives an ephemeral port the caller can read (tests), and the backlog is ours.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from common.errors import UserError


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """What to tell the user when `host` is reachable from other machines (None for loopback)."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    if api_key:
        return f"listening on {host}: other machines can reach it, and the API key travels unencrypted (HTTP)"
    return f"listening on {host} with no --api-key: anyone who can reach this port can use the model"


def bind_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket on host:port, or a UserError saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise UserError(f"cannot listen on {host!r}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart without waiting on TIME_WAIT
    try:
        sock.bind(address)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is already in use (another server?): stop it or pick another with --port"
            ) from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise UserError(f"{host} is not an address of this machine: use 127.0.0.1 or 0.0.0.0") from None
        if e.errno == errno.EACCES:
            raise UserError(f"no permission to listen on port {port}: use a port above 1024") from None
        raise
    return sock
