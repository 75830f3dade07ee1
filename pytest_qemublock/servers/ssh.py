"""SSH: OpenSSH's sshd (Debian openssh-server) + an ssh-agent, for QEMU's ``ssh`` driver.

* sshd listens on 127.0.0.1 only, on a port reserved before it starts
  (:mod:`.ports`: no other worker can be handed that port meanwhile); a
  bind failure is retried with another port, a few times.
* It runs in a private mount namespace with a tmpfs on /run, where it finds
  the ``/run/sshd`` it insists on; nothing is created on the host.
* Its own host key and one client key, both made per server. QEMU's ssh
  driver authenticates with ``ssh_userauth_publickey_auto()`` only
  (block/ssh.c ``authenticate``), i.e. through an agent: the server owns an
  ``ssh-agent`` holding the client key, and QEMU gets ``SSH_AUTH_SOCK``
  through :attr:`SshServer.wrapper`.
* QEMU checks the host key like a careful user: ``host-key-check`` mode
  ``hash`` with the sha256 of the server's real key.
* Read-only: the sftp subsystem is ``internal-sftp -R`` (sftp-server(8) -R:
  every request that would modify the file system is refused), so even
  root cannot write through it.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import os
import pwd
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import quote

from ..errors import ProcessError, ServerError
from ..machine import Wrapper
from ..process import ManagedProcess, run
from .base import Server, ServerContext, recv_until
from .namespace import Namespace, private_run
from .ports import reserve_port, tcp_listeners

SSH_PACKAGE = "openssh-server"
SSHD = "/usr/sbin/sshd"
_counter = itertools.count(1)
_ATTEMPTS = 3


def sshd_binary() -> str | None:
    return shutil.which("sshd") or (SSHD if Path(SSHD).exists() else None)


def missing_tools() -> list[str]:
    """Which of the programs this server needs are not installed."""
    need = {"sshd": sshd_binary(), "ssh-keygen": shutil.which("ssh-keygen"),
            "ssh-agent": shutil.which("ssh-agent"), "ssh-add": shutil.which("ssh-add"),
            "unshare": shutil.which("unshare")}
    return [name for name, path in need.items() if path is None]


def host_key_sha256(pubkey: Path) -> str:
    """The sha256 of an OpenSSH public key blob, as QEMU's ``host-key-check.hash`` wants it."""
    blob = base64.b64decode(pubkey.read_text().split()[1])
    return hashlib.sha256(blob).hexdigest()


class SshServer(Server):
    """sshd on 127.0.0.1:port with its agent; QEMU must run with :attr:`wrapper`."""

    kind = "sshd"

    def __init__(self, proc: ManagedProcess, registry, port: int, readonly: bool,  # type: ignore[no-untyped-def]
                 namespace: Namespace, agent: ManagedProcess, agent_sock: Path,
                 fingerprint: str, user: str) -> None:
        super().__init__(proc, registry, None, readonly)
        self.port = port
        self.namespace = namespace
        self.agent = agent
        self.agent_sock = agent_sock
        self.fingerprint = fingerprint
        self.user = user

    @property
    def wrapper(self) -> Wrapper:
        """QEMU's environment: the agent holding the client key."""
        return Wrapper(env={"SSH_AUTH_SOCK": str(self.agent_sock)}, label="ssh-agent")

    def blockdev_options(self, path: Path) -> dict:
        """Protocol-node options for QEMU's ssh driver (without node-name)."""
        return {"driver": "ssh",
                "server": {"host": "127.0.0.1", "port": str(self.port)},
                "path": str(path),
                "user": self.user,
                "host-key-check": {"mode": "hash", "type": "sha256", "hash": self.fingerprint}}

    def uri(self, path: Path) -> str:
        """An ``ssh://`` URI (block/ssh.c parse_uri: ``host_key_check`` as a query)."""
        return (f"ssh://{self.user}@127.0.0.1:{self.port}{quote(str(path))}"
                f"?host_key_check=sha256:{self.fingerprint}")

    def stop(self) -> None:
        # Once only: signalling a reaped pid's group again could hit a reused pid.
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        # sshd gives each connection a session of its own (setsid), out of
        # reach of killpg: kill whatever is left in the namespace as well.
        try:
            self.proc.stop()
            left = self.namespace.kill_all()
            if left:
                raise ProcessError(f"sshd processes {left} survived SIGKILL")
        finally:
            self.namespace.close()
            self.registry.forget(self.proc)
            try:
                self.agent.stop()
            finally:
                self.registry.forget(self.agent)
                self.agent_sock.unlink(missing_ok=True)

    def describe(self) -> str:
        return (f"sshd {'read-only (internal-sftp -R)' if self.readonly else 'writable'} "
                f"on 127.0.0.1:{self.port}")


def _q(path: Path) -> str:
    """A path in sshd_config: double-quoted (a --qb-basetemp may contain spaces)."""
    if '"' in str(path):
        raise ServerError(f"sshd_config cannot quote a path containing '\"': {path}")
    return f'"{path}"'


def _config(d: Path, port: int, readonly: bool) -> str:
    return f"""# generated by pytest-qemublock (servers/ssh.py)
ListenAddress 127.0.0.1:{port}
HostKey {_q(d / "hostkey")}
PidFile none
AuthorizedKeysFile {_q(d / "authorized_keys")}
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
AllowTcpForwarding no
Subsystem sftp internal-sftp{" -R" if readonly else ""}
LogLevel VERBOSE
"""


def _keys(ctx: ServerContext) -> Path:
    """A host key and a client key, made once per session (in its private socket dir)."""
    d = ctx.sockdir / "ssh-keys"
    if not (d / "clientkey.pub").exists():
        d.mkdir(mode=0o700, exist_ok=True)
        for key in ("hostkey", "clientkey"):
            (d / key).unlink(missing_ok=True)
            (d / f"{key}.pub").unlink(missing_ok=True)
        # both at once: each ssh-keygen is a fork of this (big) process
        run(["sh", "-c", 'ssh-keygen -q -t ed25519 -N "" -C qemublock-hostkey -f "$1/hostkey" & '
                         'ssh-keygen -q -t ed25519 -N "" -C qemublock-clientkey -f "$1/clientkey" & '
                         'wait', "sh", str(d)], timeout=ctx.timeouts.tool, check=True)
        shutil.copyfile(d / "clientkey.pub", d / "authorized_keys")
    return d


def _spawn_agent(ctx: ServerContext, name: str) -> tuple[ManagedProcess, Path]:
    sock = ctx.sockdir / f"{name}-agent.sock"
    sock.unlink(missing_ok=True)
    agent = ctx.registry.spawn(["ssh-agent", "-D", "-a", str(sock)], name="ssh-agent",
                               log_dir=ctx.evidence.log_dir)
    ctx.evidence.add_process(agent)
    return agent, sock


def _load_agent(ctx: ServerContext, agent: ManagedProcess, sock: Path, keys: Path) -> None:
    """Wait for the agent's socket, then add the client key."""
    deadline = time.monotonic() + ctx.timeouts.launch
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
            break
        except OSError:
            if not agent.alive() or time.monotonic() > deadline:
                raise ServerError(f"ssh-agent did not listen on {sock} ({agent.describe()}): "
                                  f"{agent.stderr_text().strip()}") from None
            time.sleep(0.001)
    try:
        run(["ssh-add", "-q", str(keys / "clientkey")], timeout=ctx.timeouts.tool,
            env={"SSH_AUTH_SOCK": str(sock)}, check=True)
    except ProcessError as e:
        raise ServerError(f"ssh-add failed: {e}") from None


def _banner(port: int, timeout: float, alive) -> bytes:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        buf, _ = recv_until(s, lambda b: b"\n" in b, alive, deadline)
    return buf


def _spawn_sshd(ctx: ServerContext, name: str, keys: Path, port: int,
                readonly: bool) -> ManagedProcess:
    conf = ctx.evidence.log_dir / f"{name}-sshd_config"  # in the log dir: kept as evidence
    conf.write_text(_config(keys, port, readonly))
    proc = ctx.registry.spawn(private_run([sshd_binary(), "-D", "-e", "-f", conf],  # type: ignore[list-item]
                                          mkdirs=["/run/sshd"]),
                              name="sshd", log_dir=ctx.evidence.log_dir)
    ctx.evidence.add_process(proc)
    return proc


def _sshd_ready(ctx: ServerContext, proc: ManagedProcess, port: int) -> Namespace:
    """sshd listens on 127.0.0.1:port only and sends an SSH-2.0 banner."""
    ns = Namespace(proc, "sshd", ctx.timeouts.launch)
    try:
        line = f"Server listening on 127.0.0.1 port {port}."
        deadline = time.monotonic() + ctx.timeouts.launch
        while line not in proc.stderr_text():
            if not proc.alive():
                raise ServerError(f"sshd exited ({proc.describe()}): {proc.stderr_text().strip()}")
            if time.monotonic() > deadline:
                raise ServerError(f"sshd did not listen on 127.0.0.1:{port} "
                                  f"within {ctx.timeouts.launch:.1f}s")
            time.sleep(0.001)
        listeners = tcp_listeners(proc.pid)
        if listeners != [("127.0.0.1", port)]:
            raise ServerError(f"sshd listens on {listeners}, expected only 127.0.0.1:{port}")
    except BaseException:
        ns.close()
        raise
    return ns


def start_sshd(ctx: ServerContext, *, readonly: bool, user: str | None = None) -> SshServer:
    """sshd (+ ssh-agent) on 127.0.0.1; read-only means ``internal-sftp -R``.

    The port is reserved before sshd starts; if sshd still cannot bind it
    (a foreign process took it), another port is tried, a few times.
    """
    missing = missing_tools()
    if missing:
        raise ServerError(f"{', '.join(missing)} not installed (Debian package {SSH_PACKAGE})")
    user = user or pwd.getpwuid(os.geteuid()).pw_name
    name = f"ssh{next(_counter)}"
    keys = _keys(ctx)
    fingerprint = host_key_sha256(keys / "hostkey.pub")
    agent, sock = _spawn_agent(ctx, name)  # starts while sshd does
    try:
        proc, ns, port = _start_sshd(ctx, agent, sock, name, keys, readonly)
    except BaseException:
        agent.stop()
        ctx.registry.forget(agent)
        sock.unlink(missing_ok=True)
        raise
    server = SshServer(proc, ctx.registry, port, readonly, ns, agent, sock, fingerprint, user)
    # the reservation is released: sshd listens on the port itself now
    try:
        banner = _banner(port, ctx.timeouts.launch, proc.alive)
    except OSError as e:
        banner = f"({e})".encode()
    if not banner.startswith(b"SSH-2.0-"):
        server.stop()
        raise ServerError(f"no SSH-2.0 banner on 127.0.0.1:{port}: {banner!r}\n"
                          f"  sshd stderr: {proc.stderr_text().strip()}")
    return server


def _start_sshd(ctx: ServerContext, agent: ManagedProcess, sock: Path, name: str, keys: Path,
                readonly: bool) -> tuple[ManagedProcess, Namespace, int]:
    problems: list[str] = []
    for attempt in range(1, _ATTEMPTS + 1):
        with reserve_port() as reservation:
            port = reservation.port
            proc = _spawn_sshd(ctx, name, keys, port, readonly)
            try:
                if attempt == 1:
                    _load_agent(ctx, agent, sock, keys)
                return proc, _sshd_ready(ctx, proc, port), port
            except (OSError, ServerError) as e:
                proc.stop()
                ctx.registry.forget(proc)
                problems.append(f"attempt {attempt} (port {port}): {e}")
                if "Address already in use" not in proc.stderr_text():
                    break
    raise ServerError("sshd did not start:\n  " + "\n  ".join(problems))
