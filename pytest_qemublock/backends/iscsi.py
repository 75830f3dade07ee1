"""iSCSI: tgtd (Debian tgt) exporting one image as LUN 1, for QEMU's ``iscsi`` driver.

* tgtd runs in a private mount namespace with a tmpfs on /run, so its
  control socket and lock (``/run/tgtd/socket.N[.lock]``, compiled-in
  paths) never appear on the host and a stale one cannot block the next
  run. ``-C N`` still differs per server, and every ``tgtadm`` runs inside
  the namespace (``nsenter -m``).
* The portal is 127.0.0.1:PORT on a port reserved before tgtd starts
  (:mod:`.ports`). tgtd does not fail when it cannot bind its portal: it
  silently listens on ``0.0.0.0:3260`` and ``[::]:3260`` instead
  (usr/iscsi/iscsi_tcp.c ``iscsi_tcp_init``). So the portal list and the
  sockets tgtd really listens on are checked; anything else is killed at
  once and retried on another port.
* Read-only: ``--params readonly=1`` on the LUN; tgtd then reports it write
  protected and fails every SCSI write (even from root).
* tgtd ignores SIGTERM: it is stopped with ``target delete --force`` and
  ``system delete``, and SIGKILLed if that does not work.
"""
from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from ..host.listeners import reserve_port
from ..host.namespace import Namespace, NamespaceError, private_run
from ..host.process import ManagedProcess, ProcessError, format_argv, run
from ..host.procfs import tcp_listeners
from ..qemu.build import QemuBuild
from .base import Backend, ProvideContext, Target, needs_root, new_image, started
from .server import Server, ServerContext, ServerError

TGT_PACKAGE = "tgt"
IQN_PREFIX = "iqn.2024-01.org.qemu.qemublock"
_counter = itertools.count(1)
_ATTEMPTS = 3


def missing_tools() -> list[str]:
    need = ("tgtd", "tgtadm", "unshare", "nsenter")
    return [t for t in need if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class IscsiServer(Server):
    """A private tgtd with one target (tid 1) whose LUN 1 is the image."""

    kind = "tgtd"

    def __init__(self, proc: ManagedProcess, registry, ctx: ServerContext,  # type: ignore[no-untyped-def]
                 namespace: Namespace, control: int, port: int, iqn: str, readonly: bool) -> None:
        super().__init__(proc, registry, None, readonly)
        self.ctx = ctx
        self.namespace = namespace
        self.control = control
        self.port = port
        self.iqn = iqn
        self.lun = 1

    @property
    def portal(self) -> str:
        return f"127.0.0.1:{self.port}"

    def tgtadm(self, *args: str, check: bool = True):  # type: ignore[no-untyped-def]
        """``tgtadm -C N --lld iscsi ARGS`` inside tgtd's namespace (logged in the evidence)."""
        return _tgtadm(self.ctx, self.proc, self.namespace, self.control, *args, check=check)

    def blockdev_options(self) -> dict[str, Any]:
        """Protocol-node options for QEMU's iscsi driver (without node-name)."""
        return {"driver": "iscsi", "transport": "tcp", "portal": self.portal,
                "target": self.iqn, "lun": self.lun}

    def uri(self) -> str:
        return f"iscsi://{self.portal}/{self.iqn}/{self.lun}"

    def stop(self) -> None:
        # Once only: signalling a reaped pid's group again could hit a reused pid.
        if getattr(self, "_stopped", False):
            return
        self._stopped = True
        try:
            if self.proc.alive():
                # Sessions of a QEMU still running would keep the target: --force.
                _tgtadm_all(self.ctx, self.proc, self.namespace, self.control,
                            [["--mode", "target", "--op", "delete", "--force", "--tid", "1"],
                             ["--mode", "system", "--op", "delete"]], check=False, keep_going=True)
                try:
                    self.proc.wait(2.0 * self.ctx.timeouts.factor)
                except ProcessError:
                    pass
            self.proc.kill()  # SIGKILL to the group (tgtd ignores SIGTERM); reaps
            left = self.namespace.kill_all()
            if left:
                raise ProcessError(f"tgtd processes {left} survived SIGKILL")
        finally:
            self.namespace.close()

    def describe(self) -> str:
        return (f"tgtd {self.iqn} LUN {self.lun} {'read-only' if self.readonly else 'writable'} "
                f"on {self.portal}")


def _tgtadm(ctx: ServerContext, proc: ManagedProcess, ns: Namespace, control: int, *args: str,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """One ``tgtadm -C N --lld iscsi ARGS`` in tgtd's namespace."""
    return _tgtadm_all(ctx, proc, ns, control, [list(args)], check=check)


def _tgtadm_all(ctx: ServerContext, proc: ManagedProcess, ns: Namespace, control: int,
                commands: list[list[str]], check: bool = True,
                keep_going: bool = False) -> subprocess.CompletedProcess[str]:
    """Several tgtadm commands in one ``nsenter`` (each fork of pytest costs ~5 ms),
    stopping at the first that fails unless *keep_going*; logged to ``tgtadm-PID.log``."""
    tgtadm = shlex.join([_tool("tgtadm"), "-C", str(control), "--lld", "iscsi"])
    script = ("" if keep_going else "set -e\n") + "".join(f"{tgtadm} {shlex.join(c)}\n" for c in commands)
    argv = [*ns.prefix, "/bin/sh", "-c", script]
    res = run(argv, timeout=ctx.timeouts.tool, program="sh")
    with open(ctx.evidence.log_dir / f"tgtadm-{proc.pid}.log", "a", encoding="utf-8") as f:
        f.write(f"$ {format_argv(argv[:-1])} '\n{script}'\n{res.stdout}{res.stderr}"
                f"-> exit {res.returncode}\n")
    if check and res.returncode != 0:
        raise ServerError(f"tgtadm failed (exit {res.returncode}): {(res.stderr or res.stdout).strip()}"
                          f"\n  commands: {script.strip()}")
    return res


def _wait_ready(ctx: ServerContext, proc: ManagedProcess, ns: Namespace, control: int) -> str:
    """Poll ``--mode system --op show`` until tgtd answers (or dies); return the portal list."""
    sock = ns.path(f"/run/tgtd/socket.{control}")
    deadline = time.monotonic() + ctx.timeouts.launch
    while True:
        if not proc.alive():
            raise ServerError(f"tgtd exited ({proc.describe()}): {proc.stderr_text().strip()}")
        if sock.exists():
            res = _tgtadm_all(ctx, proc, ns, control, [["--mode", "system", "--op", "show"]],
                              check=False)
            if res.returncode == 0:
                portals: str = _tgtadm(ctx, proc, ns, control, "--mode", "portal", "--op", "show").stdout
                return portals
        if time.monotonic() > deadline:
            raise ServerError(f"tgtd did not answer on control port {control} "
                              f"within {ctx.timeouts.launch:.1f}s")
        time.sleep(0.002)


def _start_tgtd(ctx: ServerContext) -> tuple[ManagedProcess, Namespace, int, int]:
    """tgtd with its portal on 127.0.0.1:PORT, verified; another port if that fails."""
    problems = []
    for attempt in range(1, _ATTEMPTS + 1):
        # The namespace makes the control socket private; N still differs per
        # server so that two tgtds never share a name even if that changed.
        control = (os.getpid() % 3000) * 10 + next(_counter) % 10 + 1  # tgtd: -C 0..32767
        reservation = reserve_port()
        port = reservation.port
        proc = ctx.registry.spawn(
            private_run([_tool("tgtd"), "-f", "-C", str(control), "--iscsi",
                         f"portal=127.0.0.1:{port}"]),
            name="tgtd", log_dir=ctx.evidence.log_dir, program="tgtd")
        ctx.evidence.add_process(proc)
        ns, wrong_portal = None, False
        try:
            ns = Namespace(proc, "tgtd", ctx.timeouts.launch)
            portals = _wait_ready(ctx, proc, ns, control)
            listeners = tcp_listeners(proc.pid)
            reservation.release()
            # tgtd falls back to 0.0.0.0:3260 without a word if the portal
            # cannot be bound: accept exactly our portal, nothing else.
            if portals.strip() != f"Portal: 127.0.0.1:{port},1" or listeners != [("127.0.0.1", port)]:
                wrong_portal = True
                raise ServerError(f"tgtd listens on {listeners} (portals {portals.strip()!r}), "
                                  f"expected only 127.0.0.1:{port}")
            return proc, ns, control, port
        except (OSError, ServerError, NamespaceError) as e:
            reservation.release()
            proc.kill()
            if ns is not None:
                ns.close()
            problems.append(f"attempt {attempt} (port {port}): {e}")
            if not wrong_portal:
                break
    raise ServerError("tgtd did not start on 127.0.0.1:\n  " + "\n  ".join(problems))


def start_tgtd(ctx: ServerContext, image: Path, *, readonly: bool) -> IscsiServer:
    """tgtd on 127.0.0.1 exporting *image* as LUN 1 of a new target; ``readonly=1`` if asked."""
    missing = missing_tools()
    if missing:
        raise ServerError(f"{', '.join(missing)} not installed (Debian package {TGT_PACKAGE})")
    proc, ns, control, port = _start_tgtd(ctx)
    iqn = f"{IQN_PREFIX}:w{os.getpid()}-{control}"
    server = IscsiServer(proc, ctx.registry, ctx, ns, control, port, iqn, readonly)
    try:
        backing = str(image)
        if "," in backing:
            # tgtadm passes "path=...,bstype=..." as one comma-separated string:
            # a comma-free name in tgtd's own /run (a tmpfs in its namespace).
            link = ns.path(f"/run/lun{server.lun}")
            link.symlink_to(image)
            backing = f"/run/lun{server.lun}"
        lun = ["--tid", "1", "--lun", str(server.lun)]
        commands = [["--mode", "target", "--op", "new", "--tid", "1", "-T", iqn],
                    ["--mode", "logicalunit", "--op", "new", *lun, "-b", backing]]
        if readonly:
            # "readonly=1" is refused on --op new (tgt 1.0.85); update it.
            commands.append(["--mode", "logicalunit", "--op", "update", *lun, "--params", "readonly=1"])
        commands.append(["--mode", "target", "--op", "bind", "--tid", "1", "-I", "ALL"])
        _tgtadm_all(ctx, proc, ns, control, commands)
    except BaseException:
        server.stop()
        raise
    return server


class IscsiBackend(Backend):
    """tgtd exporting the image as LUN 1; "ro" is a ``readonly=1`` (write-protected) LUN."""

    name = "iscsi"
    driver = "iscsi"
    storages = ("rw", "ro")
    listens_on_tcp = True

    def unavailable(self, build: QemuBuild, storage: str) -> str | None:
        missing = missing_tools()
        if missing:
            return f"iscsi backend needs {', '.join(missing)} (Debian packages {TGT_PACKAGE}, util-linux)"
        return needs_root("iscsi backend")

    def provide(self, ctx: ProvideContext, recipe: str, storage: str) -> Target:
        img = new_image(ctx, recipe)
        server = started(ctx, self.name, lambda: start_tgtd(ctx.server_ctx, img.path,
                                                             readonly=(storage == "ro")))
        return Target(self.name, storage, self.driver, img, server.blockdev_options(),
                      server=server, drive_file=server.uri())
