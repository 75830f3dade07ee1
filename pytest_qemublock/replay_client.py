"""The QMP client and /proc reader of a generated ``reproduce.sh`` (python3 stdlib only).

``reproduce.py`` embeds this file verbatim in every script, which runs it as
its one coprocess: one request line in, one answer line out. The generator
imports the same :func:`summarize`, :func:`fd_modes` and :func:`lock_ranges`
to write down what the recorded run saw, so the script compares like with
like. Requests (tab-separated, ``W`` = the script's temp dir from the env)::

    hello                      is the client up?
    connect PEER PATH          QMP greeting + qmp_capabilities on unix socket PATH
    send PEER JSON             one command; answer: its summary
    sendfd PEER ADDR JSON      bind+listen ADDR (unix:PATH / inet:HOST:PORT), pass it
                               with SCM_RIGHTS along with the command (getfd)
    event PEER NAME [STATUS]   wait for the event (JOB_STATUS_CHANGE: with that status)
    fds PID PATH / locks PID PATH   what /proc says of PID's fds on PATH

Answers: ``ok TEXT``, ``gone TEXT`` (QEMU hung up) or ``timeout TEXT``.
"""
from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from typing import Any

MODES = ("O_RDONLY", "O_WRONLY", "O_RDWR", "?")


def unroot(text: str, work: str) -> str:
    """*text* with the replay's temp dir written as ``$W`` (as in the script)."""
    return text.replace(work, "$W") if work else text


def summarize(command: str, reply: Any, work: str = "") -> str:
    """What the replay compares of a QMP reply: an error's class and text; for the node
    and drive queries the ``ro`` flags the harness reads; the HMP output; else "return"."""
    if not isinstance(reply, dict):
        return "no reply"
    if "error" in reply:
        err = reply["error"]
        return unroot(f"error {err.get('class')}: {err.get('desc')}", work)
    ret = reply.get("return")
    if command == "query-named-block-nodes" and isinstance(ret, list):
        ro = sorted(f"{n.get('node-name')}={str(n.get('ro')).lower()}" for n in ret
                    if not str(n.get("node-name", "")).startswith("#"))
        return "return ro: " + (" ".join(ro) or "no nodes")
    if command == "query-block" and isinstance(ret, list):
        ro = sorted(f"{b.get('device')}={str(b['inserted'].get('ro')).lower()}" for b in ret
                    if isinstance(b.get("inserted"), dict))
        return "return ro: " + (" ".join(ro) or "no drives")
    if command == "human-monitor-command":
        return unroot("return " + json.dumps(str(ret).strip()), work)
    return "return"


def _links(pid: int, path: str) -> list[tuple[str, int]]:
    wanted = {path, os.path.realpath(path)} if os.path.exists(path) else {path}
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") not in wanted:
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = f.read()
        except OSError:
            continue
        flags = [line.split()[1] for line in info.splitlines() if line.startswith("flags:")]
        out.append((info, int(flags[0], 8) if flags else 3))
    return out


def fd_modes(pid: int, path: str) -> str:
    """Access modes of *pid*'s fds on *path* (fdinfo flags & 3), "none" without one."""
    return " ".join(MODES[flags & 3] for _, flags in _links(pid, path)) or "none"


def lock_ranges(pid: int, path: str) -> str:
    """The lock ranges held through *pid*'s fds on *path* (fdinfo ``lock:`` lines), as the
    harness writes them: ``100-101``, ``201``, a ``:WRITE`` suffix for write locks."""
    locks = []
    for info, _ in _links(pid, path):
        for line in info.splitlines():
            cols = line.split()[1:]
            if line.startswith("lock:") and len(cols) >= 8 and cols[1] != "->":
                locks.append((int(cols[6]), cols[7], cols[3]))
    out = []
    for start, end, access in sorted(locks, key=lambda lk: lk[0]):
        text = f"{start}" if str(start) == end else f"{start}-{end}"
        out.append(text + ("" if access == "READ" else f":{access}"))
    return " ".join(out) or "none"


class Peer:
    """One QMP connection: lines in, events kept until waited for."""

    def __init__(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no QMP socket {path} within {timeout:g}s") from None
                time.sleep(0.05)
        self.timeout = timeout
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self.greeting = self.read(deadline)
        self.command(json.dumps({"execute": "qmp_capabilities"}))

    def read(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self.buf:
            if not select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("no answer")
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("QEMU closed the QMP connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def command(self, text: str, fd: int | None = None) -> dict[str, Any]:
        data = (text + "\n").encode()
        if fd is None:
            self.sock.sendall(data)
        else:
            socket.send_fds(self.sock, [data], [fd])
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self.read(deadline)
            if "event" in msg:
                self.events.append(msg)
            else:
                return msg

    def event(self, name: str, status: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["event"] == name and (not status or ev.get("data", {}).get("status") == status):
                    return self.events.pop(i)
            self.events.append(self.read(deadline))


def listening(addr: str) -> socket.socket:
    """A listening socket on ``unix:PATH`` or ``inet:HOST:PORT``."""
    kind, _, where = addr.partition(":")
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(where)
    else:
        host, _, port = where.rpartition(":")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
    s.listen(16)
    return s


def serve() -> None:
    work = os.environ.get("W", "")
    timeout = float(os.environ.get("QMP_TIMEOUT", "10"))
    peers: dict[str, Peer] = {}
    for line in sys.stdin:
        req = line.rstrip("\n").split("\t")
        try:
            answer = "ok " + _handle(req, peers, work, timeout)
        except TimeoutError as e:
            answer = f"timeout {e}"
        except (EOFError, OSError, KeyError) as e:
            answer = f"gone {e}"
        print(answer.replace("\n", " "), flush=True)


def _handle(req: list[str], peers: dict[str, Peer], work: str, timeout: float) -> str:
    op = req[0]
    if op == "hello":
        return "ready"
    if op == "connect":
        peers[req[1]] = Peer(req[2], timeout)
        return "connected"
    if op in ("send", "sendfd"):
        text = req[-1]
        command = json.loads(text).get("execute", "")
        if op == "sendfd":
            with listening(req[2]) as s:  # QEMU keeps its own copy of the fd
                reply = peers[req[1]].command(text, s.fileno())
        else:
            reply = peers[req[1]].command(text)
        return summarize(command, reply, work)
    if op == "event":
        ev = peers[req[1]].event(req[2], req[3] if len(req) > 3 else "")
        return str(ev["event"])
    if op == "fds":
        return fd_modes(int(req[1]), req[2])
    if op == "locks":
        return lock_ranges(int(req[1]), req[2])
    raise ValueError(f"unknown request {op!r}")


def listen_and_exec(argv: list[str]) -> None:
    """``listen ADDR=FD ... -- COMMAND``: bind each ADDR as fd FD (inheritable), exec COMMAND
    (how the harness hands a server its pre-bound socket)."""
    sep = argv.index("--")
    for spec in argv[:sep]:
        addr, _, fd = spec.rpartition("=")
        s = listening(addr)
        os.dup2(s.fileno(), int(fd))
        os.set_inheritable(int(fd), True)
    os.execvp(argv[sep + 1], argv[sep + 1:])


if __name__ == "__main__":
    if sys.argv[1:2] == ["listen"]:
        listen_and_exec(sys.argv[2:])
    else:
        serve()
