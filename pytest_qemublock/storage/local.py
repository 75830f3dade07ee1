"""Storage that really refuses writes, also for root.

Root ignores 0444, so a read-only image needs one of:

* ``erofs``: a read-only bind mount in a private mount namespace. A holder
  process keeps the namespace alive; QEMU and servers join it with
  ``nsenter``. The host never sees the mount, so nothing can leak into it.
  A user who is not root makes it in a user namespace of their own
  (``unshare --user --map-root-user --mount``) and joins both.
* ``eacces``: a 0444 file opened by a QEMU running as an unprivileged uid
  (``setpriv``) when we are root; a user's QEMU runs as that user, whom
  0444 refuses already.

Both let the test create images through the writable host path and flip
the storage between read-only and writable while QEMU runs.
"""
from __future__ import annotations

import functools
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import QemuBlockError
from ..host.process import ManagedProcess, run
from ..host.procfs import command_name, in_host_user_namespace, mount_namespace, sysctl
from ..qemu.context import RunContext
from ..qemu.instance import Wrapper


class StorageUnavailable(QemuBlockError):
    """A storage provider cannot work on this host; the message says what to install."""

#: uid/gid an ``eacces`` QEMU runs as (Debian's ``nobody``).
UNPRIVILEGED = 65534

KINDS = ("rw", "erofs", "eacces")


def _mount_capable() -> bool:
    # uid 0, also in a user namespace of one's own (unshare -r), may create mount
    # namespaces and mount in them; anybody else needs a user namespace first.
    return os.geteuid() == 0


def _host_root() -> bool:
    """Root of the host: may run QEMU as :data:`UNPRIVILEGED` (mapped only here)."""
    return os.geteuid() == 0 and in_host_user_namespace()


def _eacces_prefix() -> tuple[str, ...]:
    """How QEMU runs so that a 0444 file refuses it: root's as :data:`UNPRIVILEGED`; under
    ``unshare -r`` (no other uid mapped) as uid 0 without capabilities (an empty bounding set
    leaves an exec'ing root none, so no CAP_DAC_OVERRIDE); a user's as the user."""
    if _host_root():
        return ("setpriv", f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}",
                "--clear-groups", "--pdeathsig", "SIGKILL", "--")
    if os.geteuid() == 0:
        return ("setpriv", "--bounding-set=-all", "--inh-caps=-all", "--pdeathsig", "SIGKILL", "--")
    return ()


def _unshare_mount() -> list[str]:
    userns = [] if _mount_capable() else ["--user", "--map-root-user"]
    return ["unshare", *userns, "--mount", "--propagation", "private"]


def _nsenter(pid: int) -> tuple[str, ...]:
    # A user namespace must be joined before the mount namespace it owns (nsenter
    # does so); --preserve-credentials: its setgroups() is refused there (setgroups
    # "deny", user_namespaces(7)), and our uid is already root in it.
    userns = () if _mount_capable() else ("-U", "--preserve-credentials")
    return ("nsenter", "-t", str(pid), *userns, "-m", "--")


class Storage:
    """A directory whose files QEMU (started with :attr:`wrapper`) may write or not."""

    kind = "rw"
    #: strerror QEMU reports when this storage refuses a read-write open
    error_text: str | None = None

    def __init__(self, workdir: Path, journal: Callable[..., None] | None = None) -> None:
        self.directory = workdir / "data"
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o755)
        self.readonly = False
        #: the test's evidence journal: the replay repeats what the storage did (reproduce.py)
        self.journal: Callable[..., None] = journal or _no_journal
        self.journal("storage", storage=self.kind, directory=self.directory)

    @property
    def wrapper(self) -> Wrapper:
        """How to start a process so that it sees this storage."""
        return Wrapper()

    def qemu_path(self, host_path: Path) -> Path:
        """The path under which QEMU (inside :attr:`wrapper`) opens *host_path*."""
        return host_path

    def make_readonly(self) -> None:
        self.readonly = False  # plain storage cannot refuse writes

    def make_writable(self) -> None:
        self.readonly = False

    def write_probe(self) -> str | None:
        """Try to write through the storage as QEMU would; return the error, or None."""
        probe = self.directory / ".write-probe"
        probe.touch()
        res = run([*self.wrapper.prefix, "sh", "-c", 'echo x >> "$1"', "sh",
                   str(self.qemu_path(probe))], timeout=20, program="sh")
        return res.stderr.strip() or None if res.returncode else None

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.directory} {'ro' if self.readonly else 'rw'}>"


class ErofsStorage(Storage):
    """Read-only bind mount of the data directory in a private mount namespace."""

    kind = "erofs"
    error_text = "Read-only file system"

    def __init__(self, workdir: Path, ctx: RunContext) -> None:
        super().__init__(workdir, ctx.evidence.journal.add)
        self.timeouts = ctx.timeouts
        self.mountpoint = workdir / "ro"
        self.mountpoint.mkdir(exist_ok=True)
        self.holder: ManagedProcess = ctx.registry.spawn(
            [*_unshare_mount(), "--", "sleep", "infinity"],
            name="mntns-holder", log_dir=ctx.evidence.log_dir, program="sleep")
        self.journal("spawn", name="mntns-holder", pid=self.holder.pid, argv=self.holder.argv, env={},
                     sockets={}, mountpoint=self.mountpoint)
        self._ns("mount", "--bind", self.directory, self.mountpoint)
        self.make_readonly()

    def _ns(self, *args: object) -> None:
        # The holder may not have entered its namespace yet right after
        # spawn; nsenter into the host namespace would be a silent disaster,
        # so compare namespace ids first.
        self._wait_for_namespace()
        self.journal("run", argv=[*_nsenter(self.holder.pid), *map(str, args)])
        run([*_nsenter(self.holder.pid), *map(str, args)],
            timeout=self.timeouts.tool, check=True, program=os.path.basename(str(args[0])))

    def _wait_for_namespace(self) -> None:
        import time

        own = mount_namespace("self")
        deadline = time.monotonic() + self.timeouts.launch
        while time.monotonic() < deadline:
            if not self.holder.alive():
                raise StorageUnavailable(
                    f"{' '.join(_unshare_mount())} failed: {self.holder.stderr_text().strip()}")
            ns = mount_namespace(self.holder.pid)
            if ns is not None and ns != own and command_name(self.holder.pid) == "sleep":
                return
            time.sleep(0.002)
        raise StorageUnavailable("mount namespace holder did not start")

    @property
    def wrapper(self) -> Wrapper:
        return Wrapper(_nsenter(self.holder.pid), label="erofs")

    def qemu_path(self, host_path: Path) -> Path:
        return self.mountpoint / host_path.relative_to(self.directory)

    def make_readonly(self) -> None:
        self._ns("mount", "-o", "remount,bind,ro", self.mountpoint)
        self.readonly = True

    def make_writable(self) -> None:
        self._ns("mount", "-o", "remount,bind,rw", self.mountpoint)
        self.readonly = False

    def close(self) -> None:
        # The namespace and its mounts vanish with their last process.
        self.holder.stop()


class EaccesStorage(Storage):
    """0444 files, opened by a QEMU that runs as an unprivileged uid (root's run) or as
    the user (a user's run: the owner of a 0444 file is refused too)."""

    kind = "eacces"
    error_text = "Permission denied"

    def __init__(self, workdir: Path, journal: Callable[..., None] | None = None) -> None:
        super().__init__(workdir, journal)
        reason = unprivileged_cannot_reach(self.directory)
        if reason:
            raise StorageUnavailable(reason)
        self.make_readonly()

    @property
    def wrapper(self) -> Wrapper:
        return Wrapper(_eacces_prefix(), label="eacces")

    def _chmod_all(self, mode: int) -> None:
        for p in self.directory.iterdir():
            if p.is_file():
                _set_mode(p, mode, self.journal)

    def make_readonly(self) -> None:
        self._chmod_all(0o444)
        self.readonly = True

    def make_writable(self) -> None:
        self._chmod_all(0o644)
        self.readonly = False

    def protect(self, path: Path) -> None:
        """Apply the current mode to a file created after the last flip."""
        _set_mode(path, 0o444 if self.readonly else 0o644, self.journal)


def _no_journal(kind: str, **data: Any) -> None:
    pass


def _set_mode(path: Path, mode: int, journal: Callable[..., None] = _no_journal) -> None:
    # Writable for the unprivileged QEMU as its owner, not for everyone (0666):
    # 0444 refuses its O_RDWR open all the same, owner or not.
    if mode & 0o200 and _host_root():
        os.chown(path, UNPRIVILEGED, UNPRIVILEGED)
        journal("run", argv=["chown", f"{UNPRIVILEGED}:{UNPRIVILEGED}", path])
    os.chmod(path, mode)
    journal("run", argv=["chmod", f"{mode:04o}", path])


def qemu_socket_dir(path: Path) -> Path:
    """Create *path* (0700) where any QEMU of a test may create a unix socket and no
    other user can reach one: owned by the ``eacces`` QEMU's uid when we are root
    (root's QEMU needs no permission), else by us. Instead of a world-writable dir."""
    path.mkdir(mode=0o700, exist_ok=True)
    if _host_root():
        os.chown(path, UNPRIVILEGED, UNPRIVILEGED)
    os.chmod(path, 0o700)
    return path


@functools.cache
def unavailable_reason(kind: str) -> str | None:
    """Why *kind* cannot work on this host (None if it can). Checked once per process."""
    if kind == "rw":
        return None
    if kind == "erofs":
        for tool in ("unshare", "nsenter", "mount"):
            if shutil.which(tool) is None:
                return f"erofs storage needs {tool} (Debian package util-linux / mount)"
        argv = _unshare_mount()
        res = run([*argv, "true"], timeout=20, program="true")
        if res.returncode != 0:
            return (f"erofs storage needs a private mount namespace, `{' '.join(argv)}` failed: "
                    f"{res.stderr.strip()}{'' if _mount_capable() else _userns_disabled()}")
        return None
    if kind == "eacces":
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            return "eacces storage needs setpriv (Debian package util-linux)"
        return None if _host_root() else _owner_not_refused()
    return f"unknown storage kind {kind!r}"


#: sysctls that disable user namespaces for users, and the value that does
_USERNS_OFF = {"kernel.unprivileged_userns_clone": "0", "user.max_user_namespaces": "0",
               "kernel.apparmor_restrict_unprivileged_userns": "1"}


def _userns_disabled() -> str:
    off = [f"{k}={v}" for k, v in _USERNS_OFF.items() if sysctl(k) == v]
    return (f" (user namespaces are disabled for users: {', '.join(off)}; run as root or change it)"
            if off else "")


def _owner_not_refused() -> str | None:
    """Why a QEMU of ours (started with :func:`_eacces_prefix`) would not be refused a 0444
    file of ours, found by trying; None if it would be."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qemublock-eacces-") as d:
        probe = Path(d) / "probe"
        probe.touch(0o444)
        res = run([*_eacces_prefix(), "sh", "-c", 'exec 3<>"$1"', "sh", str(probe)], timeout=20,
                  program="sh")
    if res.returncode != 0 and "Permission denied" in res.stderr:
        return None
    return (f"eacces storage: a process of uid {os.geteuid()} may open a 0444 file of its own "
            f"for writing ({res.stderr.strip() or 'no error'}; CAP_DAC_OVERRIDE?), so QEMU "
            "would not be refused")


@functools.lru_cache(maxsize=64)
def unprivileged_cannot_reach(path: Path, executable: bool = False) -> str | None:
    """Why uid 65534 cannot reach *path* (None if it can), found by trying it.

    An eacces QEMU runs as that uid: its binary and the image directory
    must be reachable through world-searchable parents. A user's run needs
    no other uid (its QEMU runs as the user).
    """
    if not _host_root():
        return None
    # Run the binary itself: access(2) and execve(2) disagree in some sandboxes.
    probe = [str(path), "--version"] if executable else ["test", "-r", str(path)]
    res = run(["setpriv", f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups",
               "--", *probe], timeout=20, program=os.path.basename(probe[0]))
    if res.returncode == 0:
        return None
    return (f"eacces storage runs QEMU as uid {UNPRIVILEGED}, which cannot reach {path} "
            "(a parent directory is not world-searchable): use a --qb-basetemp / build "
            "directory below a world-searchable path such as /tmp or /var/cache")


def make_storage(kind: str, ctx: RunContext) -> Storage:
    """Create storage of *kind* in ``st-KIND`` of the test's work dir; raises
    :class:`StorageUnavailable`."""
    reason = unavailable_reason(kind)
    if reason:
        raise StorageUnavailable(reason)
    workdir = ctx.workdir / f"st-{kind}"
    if kind == "erofs":
        return ErofsStorage(workdir, ctx)
    if kind == "eacces":
        return EaccesStorage(workdir, ctx.evidence.journal.add)
    return Storage(workdir, ctx.evidence.journal.add)


def is_world_traversable(path: Path) -> bool:
    """Every ancestor lets 'others' search it (an eacces QEMU must reach the image)."""
    for p in [path, *path.parents]:
        if not os.stat(p).st_mode & stat.S_IXOTH:
            return False
    return True
