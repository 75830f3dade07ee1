"""Session-wide state: builds, probes, the process registry and directories.

One :class:`QemuBlockSession` lives in ``config.stash`` per pytest process
(each xdist worker has its own). Everything expensive is lazy, so a pytest run
that never touches QEMU (``--help``, the project's unrelated tests) costs
nothing and needs no QEMU installed.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .qemu.build import QemuBuild, resolve_builds, resolve_default_build
from .qemu.build import BuildError
from .qemu.instance import Timeouts
from .qemu.capabilities import Capabilities, load_capabilities
from .host.process import ProcessRegistry, reap_stale
from .host import leftovers, sandbox

if TYPE_CHECKING:
    import pytest

# AF_UNIX paths are limited to 108 bytes; leave room for socket names.
MAX_SOCKET_DIR = 80


@dataclass
class Settings:
    """Options after parsing; see ``plugin.pytest_addoption`` for their help."""

    build_specs: list[str]
    default_build: Callable[[], QemuBuild]
    timeout_factor: float
    basetemp: str | None
    evidence_dir: Path
    retention: str
    cache_dir: Path
    worker_id: str
    keep_workdirs: bool = False
    #: one id per pytest run, the same on every xdist worker
    run_uid: str = ""

    @classmethod
    def from_config(cls, config: "pytest.Config") -> "Settings":
        """Options, then ini, then defaults; xdist workers get their own worker id."""
        opt = config.getoption
        # workerinput, not $PYTEST_XDIST_WORKER: a pytest started *from* a
        # worker (pytester) inherits the variable but is no worker itself.
        workerinput = getattr(config, "workerinput", None) or {}
        worker = workerinput.get("workerid", "main")
        factor = opt("--qb-timeout-factor") or float(config.getini("qb_timeout_factor") or 1.0)
        evidence_dir = Path(opt("--qb-evidence-dir") or config.rootpath / "qemublock-evidence")

        def default_build() -> QemuBuild:
            return resolve_default_build(
                lambda o: opt(o), lambda i: config.getini(i) or None,
                opt("--qemu-build-dir") or config.getini("qemu_build_dir") or None)

        cache = getattr(config, "cache", None)  # absent with -p no:cacheprovider
        return cls(
            build_specs=list(opt("--qemu-build")),
            default_build=default_build,
            timeout_factor=factor,
            basetemp=opt("--qb-basetemp"),
            evidence_dir=evidence_dir,
            retention=opt("--qb-evidence"),
            cache_dir=Path(cache.mkdir("qemublock")) if cache else evidence_dir / ".cache",
            worker_id=worker.replace("gw", "w"),
            keep_workdirs=opt("--qb-keep-workdirs"),
            run_uid=workerinput.get("testrunuid") or uuid.uuid4().hex,
        )


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
        with open("/proc/self/mounts", encoding="utf-8") as f:
            fstype = next((cols[2] for cols in (line.split() for line in f) if cols[1] == shm), None)
        st = os.statvfs(shm)
    except OSError:
        return None
    if fstype != "tmpfs" or not os.access(shm, os.W_OK | os.X_OK):
        return None
    return shm if st.f_bavail * st.f_frsize >= SHM_MIN_FREE else None


class QemuBlockSession:
    """What every fixture of one pytest process shares."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timeouts = Timeouts.scaled(settings.timeout_factor)
        self._builds: list[QemuBuild] | None = None
        self._build_error: BuildError | None = None
        self._caps: dict[str, Capabilities] = {}
        self._root: Path | None = None
        self._sockdir: Path | None = None
        self._test_counter = 0
        state_dir = Path(tempfile.gettempdir()) / f"qemublock-{os.getuid()}-procs"
        state_dir.mkdir(mode=0o700, exist_ok=True)
        self.reaped = reap_stale(state_dir)
        # trust: dead runs' dirs go; this process's children start in a sandbox (host/sandbox.py)
        self.removed_dirs = leftovers.sweep(leftovers.bases(settings.basetemp))
        self.sandbox, self.sandbox_line = sandbox.try_enter(worker=settings.worker_id != "main")
        self.registry = ProcessRegistry(state_dir / f"{os.getpid()}.procs.jsonl")
        self.registry.install()

    # -- builds -----------------------------------------------------------------
    @property
    def builds(self) -> list[QemuBuild]:
        """All builds under test; raises :class:`BuildError` (cached) if unusable."""
        if self._build_error is not None:
            raise self._build_error
        if self._builds is None:
            try:
                self._builds = resolve_builds(self.settings.build_specs, self.settings.default_build)
            except BuildError as e:
                self._build_error = e
                raise
        return self._builds

    @property
    def resolved_builds(self) -> list[QemuBuild]:
        """The builds resolved so far (none if resolution failed or never ran)."""
        return list(self._builds or [])

    def build(self, name: str) -> QemuBuild:
        for b in self.builds:
            if b.name == name:
                return b
        raise BuildError(f"no build named {name!r}")

    def capabilities(self, build: QemuBuild) -> Capabilities:
        if build.name not in self._caps:
            from .qemu.probing import probe_build

            outside = self.sandbox.outside() if self.sandbox else contextlib.nullcontext()
            with outside:  # trust: libgfapi crashes on a PID namespace's mismatched /proc
                self._caps[build.name] = load_capabilities(
                    build, self.settings.cache_dir,
                    lambda b: probe_build(b, self.registry, self.root / "probe", self.timeouts))
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
        leaked = [p.describe() for p in self.registry.kill_all()]
        if self.sandbox is not None:  # trust: whatever escaped the registry ends with the sandbox
            leaked += [f"pid {pid} (not started by the registry)" for pid in self.sandbox.close()]
        if self._root is not None and not self.settings.keep_workdirs:
            shutil.rmtree(self._root, ignore_errors=True)
        if self._sockdir is not None and not str(self._sockdir).startswith(str(self._root)):
            shutil.rmtree(self._sockdir, ignore_errors=True)
        return leaked
