"""The external Redis a fault-tolerant cluster's GCS keeps its state in (docs/cluster.md, "Head node loss"),
checked before the head starts: ``ray start --head`` given a Redis it cannot reach waits on it rather than saying
so, and one that refuses the password fails deep in the GCS's log. ``check_redis`` answers in seconds, in words.

Spoken in Redis's own protocol (RESP: ``AUTH``, ``PING``) over a socket: two commands do not need a client library.
"""

from __future__ import annotations

import socket

from asl_platform.errors import UserError


def _command(*words: str) -> bytes:
    """A RESP array of bulk strings (what ``redis-cli`` sends)."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _reply(stream) -> str:
    line = stream.readline()
    if not line:
        raise ConnectionError("the connection closed without an answer")
    return line.decode(errors="replace").strip()


def check_redis(address: str, password: str | None, timeout_s: float = 3.0) -> None:
    """Nothing when Redis at ``address`` (host:port) answers ``PING`` with ``password``; else a UserError that says
    which of: not an address, unreachable, not answering, the password refused, or something else than Redis."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"Redis address {address!r}: expected host:port (RAY_REDIS_ADDRESS), e.g. 10.0.0.5:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as connection:
            connection.settimeout(timeout_s)
            stream = connection.makefile("rb")
            if password:
                connection.sendall(_command("AUTH", password))
                answer = _reply(stream)
                if answer.startswith("-"):
                    if "without any password configured" in answer:
                        raise UserError(f"Redis at {address} has no password set, but one was given: set "
                                        "requirepass on the server (the GCS state must not be open) or give none")
                    raise UserError(f"Redis at {address} refused the password ({answer[1:]}): check "
                                    "--redis-password against the server's requirepass")
            connection.sendall(_command("PING"))
            answer = _reply(stream)
    except socket.timeout:
        raise UserError(f"Redis at {address} did not answer within {timeout_s:g} s: is it running, and is the port "
                        "open to this node (a firewall, a security group)?") from None
    except OSError as exc:
        raise UserError(f"Redis at {address} cannot be reached ({exc.strerror or exc}): is it running on that "
                        "host and port?") from None
    if answer.startswith("-NOAUTH"):
        raise UserError(f"Redis at {address} needs a password: give it with --redis-password")
    if answer != "+PONG":
        raise UserError(f"{address} answered {answer[:80]!r} to PING: is it Redis?")
