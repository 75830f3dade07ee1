"""Session-wide state: builds, probes, the process registry and directories.

One :class:`QemuBlockSession` lives in ``config.stash`` per pytest process
(each xdist worker has its own). Everything is lazy, so a pytest run that
never touches QEMU (``--help``, another project's tests in the same venv)
costs nothing, needs no QEMU installed and is left alone: no process is
reaped, no state file written and SIGTERM keeps its handler until the
registry is first used (:meth:`QemuBlockSession.activate`).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from .config import Settings
from .errors import QemuBlockError
from .evidence import TestEvidence
from .host import leftovers, procfs, sandbox
from .host.journal import StateDir, default_state_dir, new_token, reap_stale
from .host.process import ProcessRegistry
from .qemu.arch import REFERENCE, Arch
from .qemu.build import BuildError, QemuBuild, build_labels, resolve_builds
from .qemu.capabilities import Capabilities, load_capabilities
from .qemu.instance import Timeouts

SESSION_KEY = pytest.StashKey["QemuBlockSession"]()
EVIDENCE_KEY = pytest.StashKey[TestEvidence]()
FAILED_KEY = pytest.StashKey[bool]()
#: "failed: <message>" or "xfailed: <reason>", for the case's reproducer (reproduce.py)
OUTCOME_KEY = pytest.StashKey[str]()
WORKDIR_KEY = pytest.StashKey[Path]()  # removed once the teardown report is made

# AF_UNIX paths are limited to 108 bytes; leave room for socket names.
MAX_SOCKET_DIR = 80


SHM = "/dev/shm"
SHM_MIN_FREE = 1 << 30


def default_basetemp(shm: str = SHM) -> str | None:
    """Where work dirs go without ``--qb-basetemp``: /dev/shm if it is a writable tmpfs
    with at least 1 GiB free, else ``None`` (tempfile's choice, ``$TMPDIR`` or /tmp).

    Every case creates a work dir, log files and a QMP transcript and removes them
    again; on ext4 that file-system metadata work cost ~3 ms of CPU per case (open
    with O_CREAT alone ~0.2 ms), a tenth of the whole run. file-posix's read-only
    handling (open flags, permissions, OFD locks) is the same on tmpfs; to run on
    another file system, pass ``--qb-basetemp``.
    """
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    if procfs.mount_fstype(shm) != "tmpfs" or not os.access(shm, os.W_OK | os.X_OK):
        return None
    return shm if st.f_bavail * st.f_frsize >= SHM_MIN_FREE else None


#: What a run needs free where its work dirs go, checked at start-up. The suites on two
#: builds with -n 2 (3612 cases) peaked at 123 MiB allocated below the basetemp (du,
#: sampled every ~0.3 s); about twice that, for short peaks between samples and
#: growing suites. Short of it, cases fail one by one with ENOSPC tracebacks.
RUN_NEEDS = 256 << 20


class SpaceError(QemuBlockError):
    """The work dirs' file system has too little free space for a run."""


def check_free_space(basetemp: str | None, needs: int = RUN_NEEDS) -> None:
    """Refuse a run whose work dirs would fill their file system (:class:`SpaceError`).

    *basetemp* (``--qb-basetemp``) need not exist yet: its nearest existing
    ancestor is on the file system it will be made on. Nothing is created.
    """
    base = Path(basetemp or default_basetemp() or tempfile.gettempdir())
    where = f"--qb-basetemp={base}" if basetemp else f"work dir base {base} (the default)"
    probe = base.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError as e:
        raise SpaceError(f"{where}: cannot tell its free space: {e.strerror or e}") from None
    free = st.f_bavail * st.f_frsize
    if free < needs:
        raise SpaceError(f"{where}: its file system has {free >> 20} MiB free, a run needs "
                         f"about {needs >> 20} MiB (free some space, or pass --qb-basetemp "
                         f"a directory on a roomier file system)")


class QemuBlockSession:
    """What every fixture of one pytest process shares."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeouts = Timeouts.scaled(settings.timeout_factor)
        self._builds: list[QemuBuild] | None = None
        self._labels: list[tuple[str, Arch]] | None = None  # build_ids(), once
        self._build_error: BuildError | None = None
        self._caps: dict[str, Capabilities] = {}
        self._probe_errors: dict[str, QemuBlockError] = {}
        self._root: Path | None = None
        self._sockdir: Path | None = None
        self._test_counter = 0
        self._registry: ProcessRegistry | None = None
        #: processes of earlier crashed runs killed on activation
        self.reaped: list[str] = []
        #: journals of earlier runs that could not be fully read (corrupt, not ours)
        self.reap_warnings: list[str] = []
        #: work and socket dirs of dead runs removed on activation
        self.removed_dirs: list[str] = []
        #: the PID + network namespaces children start in (None: none, see sandbox_line)
        self.sandbox: sandbox.Sandbox | None = None
        self.sandbox_line = ""
        self.reaped_reported = False

    # -- activation -------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether the registry (and with it the crash-recovery nets) is set up."""
        return self._registry is not None

    def activate(self) -> None:
        """Reap what earlier crashed runs left, start this run's state journal and take
        over SIGTERM. Done on first use only: the plugin is inert in runs that never
        ask for it."""
        if self._registry is not None:
            return
        state = StateDir(default_state_dir())  # StateDirError: not private, refused
        reaped = reap_stale(state)
        self.reaped, self.reap_warnings = reaped.killed, reaped.warnings
        # dead runs' dirs go; this process's children start in a sandbox (host/sandbox.py)
        self.removed_dirs = leftovers.sweep(leftovers.bases(self.settings.basetemp))
        self.sandbox, self.sandbox_line = sandbox.try_enter(worker=self.settings.worker_id != "main")
        registry = ProcessRegistry(state, new_token())
        registry.install()
        self._registry = registry

    @property
    def registry(self) -> ProcessRegistry:
        """Owns every process of this pytest process; the first use activates the session."""
        self.activate()
        assert self._registry is not None
        return self._registry

    # -- builds -----------------------------------------------------------------
    @property
    def builds(self) -> list[QemuBuild]:
        """All builds under test; raises :class:`BuildError` (cached) if unusable."""
        if self._build_error is not None:
            raise self._build_error
        if self._builds is None:
            try:
                self._builds = resolve_builds(self.settings.build_specs, self.settings.default_build,
                                              self.settings.allow_mixed_build)
            except BuildError as e:
                self._build_error = e
                raise
        return self._builds

    @property
    def resolved_builds(self) -> list[QemuBuild]:
        """The builds resolved so far (none if resolution failed or never ran)."""
        return list(self._builds or [])

    def build_ids(self) -> list[str]:
        """The build names collection parametrizes ``qemu_build`` with: every build's if
        there are several, a lone build's only if its arch is not x86_64 (so the ids of
        x86_64 runs stay as they were)."""
        if self.settings.build_specs:
            # asked once per test function at collection: the same specs, the same files
            if self._labels is None:
                self._labels = build_labels(self.settings.build_specs)
            labels = self._labels
        else:
            try:
                labels = [(b.name, b.arch) for b in self.builds]
            except BuildError:
                return []  # the qemu_build fixture reports it, in one line
        if len(labels) > 1 or any(arch.name != REFERENCE for _, arch in labels):
            return [name for name, _ in labels]
        return []

    def build(self, name: str) -> QemuBuild:
        for b in self.builds:
            if b.name == name:
                return b
        raise BuildError(f"no build named {name!r}")

    def capabilities(self, build: QemuBuild) -> Capabilities:
        """The probed capabilities of *build*; raises :class:`~.qemu.probing.ProbeError`
        (remembered: the probe is not retried per test) if it cannot be probed."""
        from .qemu.probing import ProbeError, probe_build

        if build.name in self._probe_errors:
            raise self._probe_errors[build.name]
        if build.name not in self._caps:
            self.activate()  # the sandbox is known from here on
            outside = self.sandbox.outside() if self.sandbox else contextlib.nullcontext()
            try:
                with outside:  # libgfapi crashes on a PID namespace's mismatched /proc
                    self._caps[build.name] = load_capabilities(
                        build, self.settings.cache_dir,
                        lambda b: probe_build(b, self.registry, self.root / "probe", self.timeouts))
            except ProbeError as e:
                self._probe_errors[build.name] = e
                raise
        return self._caps[build.name]

    # -- directories --------------------------------------------------------------
    @property
    def root(self) -> Path:
        """This process's run directory; QEMU-visible files live below it.

        Mode 0711: an unprivileged QEMU (EACCES storage) must traverse it,
        but nobody may list it.
        """
        if self._root is None:
            base = self.settings.basetemp or default_basetemp()
            if base:
                Path(base).mkdir(parents=True, exist_ok=True)
            prefix = f"qb-{self.settings.worker_id}-"
            self._root = Path(tempfile.mkdtemp(prefix=prefix, dir=base or None))
            os.chmod(self._root, 0o711)
            leftovers.claim(self._root, keep=self.settings.keep_workdirs)  # trust: removed if we die
        return self._root

    @property
    def sockdir(self) -> Path:
        """A short, private (0700) directory for unix sockets."""
        if self._sockdir is None:
            candidate = self.root / "s"
            if len(str(candidate)) > MAX_SOCKET_DIR:
                candidate = Path(tempfile.mkdtemp(prefix="qbs-", dir="/tmp"))
                leftovers.claim(candidate)  # trust
            candidate.mkdir(mode=0o700, exist_ok=True)
            os.chmod(candidate, 0o700)
            self._sockdir = candidate
        return self._sockdir

    def new_workdir(self, label: str) -> Path:
        self._test_counter += 1
        d = self.root / f"t{self._test_counter:04d}"
        d.mkdir(mode=0o755)
        (d / "label").write_text(label + "\n")
        return d

    def evidence_root(self) -> Path:
        """The evidence directory, emptied of older runs' evidence on first use.

        Emptied lazily, by whichever process keeps evidence first in this run
        (under a lock; xdist workers share the run id), so a run that keeps
        nothing leaves the last run's evidence alone.
        """
        root = self.settings.evidence_dir
        root.mkdir(parents=True, exist_ok=True)
        marker = root / f".run-{self.settings.run_uid}"
        if marker.exists():
            return root
        with open(root / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not marker.exists():
                for child in root.iterdir():
                    if child.name == ".lock":
                        continue
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
                marker.touch()
        return root

    # -- teardown -------------------------------------------------------------------
    def close(self) -> list[str]:
        """Kill leftovers and remove the run directory; returns what was leaked."""
        leaked = [p.describe() for p in self._registry.kill_all()] if self._registry else []
        if self.sandbox is not None:  # whatever escaped the registry ends with the sandbox
            leaked += [f"pid {pid} (not started by the registry)" for pid in self.sandbox.close()]
        if self._root is not None and not self.settings.keep_workdirs:
            shutil.rmtree(self._root, ignore_errors=True)
        if self._sockdir is not None and not str(self._sockdir).startswith(str(self._root)):
            shutil.rmtree(self._sockdir, ignore_errors=True)
        return leaked
