"""SSH: OpenSSH's sshd (Debian openssh-server) + an ssh-agent, for QEMU's ``ssh`` driver.

* The listening socket is ours, pre-bound on 127.0.0.1 (no port race between
  xdist workers) with TCP_NODELAY, and handed to ``systemd-socket-activate
  --accept --inetd``, which starts one ``sshd -i`` per connection on the
  accepted socket. sshd in daemon mode sets TCP_NODELAY only for interactive
  sessions, so an sftp session (QEMU's) stalled ~40 ms on a delayed ACK:
  a QEMU open over ssh took 85 ms that way, 46 ms in inetd mode.
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
from typing import Any
from urllib.parse import quote

from ..host.listeners import Listener, recv_until, socket_activation
from ..host.namespace import Namespace, private_run
from ..host.process import ManagedProcess, ProcessError, run
from ..host.procfs import tcp_listeners
from ..qemu.build import QemuBuild
from ..qemu.instance import Wrapper
from .base import Backend, ProvideContext, Target, needs_root, new_image, started
from .server import Server, ServerContext, ServerError

SSH_PACKAGE = "openssh-server"
SSHD = "/usr/sbin/sshd"
ACTIVATE = "systemd-socket-activate"
ACTIVATE_PACKAGE = "systemd"
_counter = itertools.count(1)


def sshd_binary() -> str | None:
    return shutil.which("sshd") or (SSHD if Path(SSHD).exists() else None)


def missing_tools() -> list[str]:
    """Which of the programs this server needs are not installed."""
    need = {"sshd": sshd_binary(), "ssh-keygen": shutil.which("ssh-keygen"),
            "ssh-agent": shutil.which("ssh-agent"), "ssh-add": shutil.which("ssh-add"),
            "unshare": shutil.which("unshare"), ACTIVATE: shutil.which(ACTIVATE)}
    return [name for name, path in need.items() if path is None]


def host_key_sha256(pubkey: Path) -> str:
    """The sha256 of an OpenSSH public key blob, as QEMU's ``host-key-check.hash`` wants it."""
    blob = base64.b64decode(pubkey.read_text().split()[1])
    return hashlib.sha256(blob).hexdigest()


class SshServer(Server):
    """sshd on 127.0.0.1:port with its agent; QEMU must run with :attr:`wrapper`."""

    kind = "sshd"

    def __init__(self, proc: ManagedProcess, registry, listener: Listener,  # type: ignore[no-untyped-def]
                 readonly: bool, namespace: Namespace, agent: ManagedProcess, agent_sock: Path,
                 fingerprint: str, user: str) -> None:
        super().__init__(proc, registry, listener, readonly)
        self.port = listener.port
        self.namespace = namespace
        self.agent = agent
        self.agent_sock = agent_sock
        self.fingerprint = fingerprint
        self.user = user

    @property
    def wrapper(self) -> Wrapper:
        """QEMU's environment: the agent holding the client key."""
        return Wrapper(env={"SSH_AUTH_SOCK": str(self.agent_sock)}, label="ssh-agent")

    def blockdev_options(self, path: Path) -> dict[str, Any]:
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
        # A connection's sshd may have left the process group (privilege
        # separation): kill whatever is left in the namespace as well.
        try:
            super().stop()  # the activator: stopped, forgotten, its listener closed
            left = self.namespace.kill_all()
            if left:
                raise ProcessError(f"sshd processes {left} survived SIGKILL")
        finally:
            self.namespace.close()
            try:
                self.agent.stop()
            finally:
                self.agent_sock.unlink(missing_ok=True)

    def describe(self) -> str:
        return (f"sshd {'read-only (internal-sftp -R)' if self.readonly else 'writable'} "
                f"on 127.0.0.1:{self.port}")


def _q(path: Path) -> str:
    """A path in sshd_config: double-quoted (a --qb-basetemp may contain spaces)."""
    if '"' in str(path):
        raise ServerError(f"sshd_config cannot quote a path containing '\"': {path}")
    return f'"{path}"'


def _config(d: Path, readonly: bool) -> str:
    return f"""# generated by pytest-qemublock (backends/ssh.py); sshd -i: no ListenAddress
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


def start_sshd(ctx: ServerContext, *, readonly: bool, user: str | None = None) -> SshServer:
    """sshd (+ ssh-agent) on 127.0.0.1; read-only means ``internal-sftp -R``."""
    missing = missing_tools()
    if missing:
        raise ServerError(f"{', '.join(missing)} not installed "
                          f"(Debian packages {SSH_PACKAGE}, {ACTIVATE_PACKAGE})")
    user = user or pwd.getpwuid(os.geteuid()).pw_name
    name = f"ssh{next(_counter)}"
    keys = _keys(ctx)
    fingerprint = host_key_sha256(keys / "hostkey.pub")
    agent, sock = _spawn_agent(ctx, name)  # starts while sshd does
    listener = Listener("tcp", ctx.sockdir, name)
    proc = ns = None
    try:
        proc = _spawn_sshd(ctx, name, keys, listener, readonly)
        _load_agent(ctx, agent, sock, keys)
        ns = _sshd_ready(ctx, proc, listener)
    except BaseException:
        for p in (proc, agent):
            if p is not None:
                p.stop()
        sock.unlink(missing_ok=True)
        listener.close()
        raise
    return SshServer(proc, ctx.registry, listener, readonly, ns, agent, sock, fingerprint, user)


def _spawn_sshd(ctx: ServerContext, name: str, keys: Path, listener: Listener,
                readonly: bool) -> ManagedProcess:
    conf = ctx.evidence.log_dir / f"{name}-sshd_config"  # in the log dir: kept as evidence
    conf.write_text(_config(keys, readonly))
    inetd = [shutil.which(ACTIVATE), "--accept", "--inetd", sshd_binary(), "-i", "-e", "-f", conf]
    proc = ctx.registry.spawn(private_run(socket_activation(inetd, listener.fd),  # type: ignore[arg-type]
                                          mkdirs=["/run/sshd"]),
                              name="sshd", log_dir=ctx.evidence.log_dir, pass_fds=[listener.fd],
                              program=ACTIVATE)
    ctx.evidence.add_process(proc)
    return proc


def _sshd_ready(ctx: ServerContext, proc: ManagedProcess, listener: Listener) -> Namespace:
    """Listening on 127.0.0.1:port only, and a connection gets sshd's SSH-2.0 banner."""
    # ACTIVATE's comm, as the kernel truncates it (15 characters)
    ns = Namespace(proc, ACTIVATE[:15], ctx.timeouts.launch)
    try:
        listener.release()  # systemd-socket-activate holds it now
        listeners = tcp_listeners(proc.pid)
        if listeners != [("127.0.0.1", listener.port)]:
            raise ServerError(f"sshd listens on {listeners}, expected only 127.0.0.1:{listener.port}")
        deadline = time.monotonic() + ctx.timeouts.launch
        try:
            with listener.connect(ctx.timeouts.launch) as s:
                banner, why = recv_until(s, lambda b: b"\n" in b, proc.alive, deadline)
        except OSError as e:
            banner, why = b"", str(e)
        if not banner.startswith(b"SSH-2.0-"):
            raise ServerError(f"no SSH-2.0 banner on 127.0.0.1:{listener.port} ({why}): {banner!r}\n"
                              f"  sshd stderr: {proc.stderr_text().strip()}")
    except BaseException:
        ns.close()
        raise
    return ns


class SshBackend(Backend):
    """sshd + ssh-agent; "ro" serves sftp with ``internal-sftp -R``."""

    name = "ssh"
    driver = "ssh"
    storages = ("rw", "ro")
    listens_on_tcp = True

    def unavailable(self, build: QemuBuild, storage: str) -> str | None:
        missing = missing_tools()
        if missing:
            return (f"ssh backend needs {', '.join(missing)} (Debian packages {SSH_PACKAGE}, "
                    f"openssh-client, util-linux)")
        return needs_root("ssh backend")

    def provide(self, ctx: ProvideContext, recipe: str, storage: str) -> Target:
        img = new_image(ctx, recipe)
        server = started(ctx, self.name, lambda: start_sshd(ctx.server_ctx, readonly=(storage == "ro")))
        return Target(self.name, storage, self.driver, img, server.blockdev_options(img.path),
                      wrapper=server.wrapper, server=server, drive_file=server.uri(img.path))
