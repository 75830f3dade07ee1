"""TCP ports for servers that cannot inherit a listening socket (sshd, tgtd).

:func:`reserve_port` asks the kernel for a free 127.0.0.1 port and keeps it
bound, with ``SO_REUSEADDR`` and *not* listening, until the server has bound
it itself. Linux lets a second ``SO_REUSEADDR`` socket bind an address whose
other owners are not listening (the server does: sshd and tgtd both set
``SO_REUSEADDR``), while automatic port selection (``bind(…, 0)`` of other
workers' listeners, ``connect()``'s ephemeral ports) skips a port that is
already bound (net/ipv4/inet_connection_sock.c ``inet_csk_find_open_port``,
``inet_csk_bind_conflict`` with ``relax=false``). So no other worker can be
handed the port between our choice and the server's bind; only a foreign
process binding that exact port explicitly could, and the servers verify
their sockets anyway (:func:`tcp_listeners`).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path


class PortReservation:
    """A 127.0.0.1 port held (bound, not listening) until :meth:`release`."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]

    def release(self) -> None:
        """Give the port up, once the server listens on it."""
        self.sock.close()

    def __enter__(self) -> "PortReservation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def reserve_port() -> PortReservation:
    return PortReservation()


def _hex_addr(text: str) -> str:
    """``0100007F:1F90`` (/proc/net/tcp, little-endian words) -> ``127.0.0.1``; IPv6 likewise."""
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # IPv6: four 32-bit words, each in host (little-endian) order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process *pid* has open."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        entries = list(fd_dir.iterdir())
    except OSError:
        return inodes
    for fd in entries:
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def tcp_listeners(pids: list[int] | int) -> list[tuple[str, int]]:
    """``(address, port)`` of every listening TCP socket (IPv4 and IPv6) held by *pids*.

    Read from ``/proc`` (``/proc/PID/net/tcp*`` + the fd table), so it works
    without ``ss`` and for processes in another mount namespace.
    """
    pids = [pids] if isinstance(pids, int) else list(pids)
    inodes: set[int] = set()
    for pid in pids:
        inodes |= socket_inodes(pid)
    found: list[tuple[str, int]] = []
    if not inodes or not pids:
        return found
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pids[0]}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A":  # TCP_LISTEN
                continue
            if int(cols[9]) in inodes:
                addr, port = cols[1].split(":")
                found.append((_hex_addr(addr), int(port, 16)))
    return sorted(set(found))


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group *pgid* (a server and its workers)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out.append(int(d.name))
    return out
