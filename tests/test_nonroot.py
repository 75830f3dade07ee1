"""A developer's run: the suites as a user who is not root, checked from root's CI.

QEMU developers run the suites as themselves. This installs the plugin (a wheel
of this checkout) into a venv of an unprivileged uid, copies the suites into a
directory of that uid (the developer's own clone) and runs all of them as that
uid on the default build (``PATH``; ~20 s with -n 2, ~7 s more to set up). The
run must be green, the storages that work without root must have run (erofs in
a user + mount namespace, eacces as a 0444 file that refuses its owner,
unix-socket servers), and every skip must give one of the reasons below: what
really needs root, or what the build lacks.

The uid is ``qbtest`` (``scripts/setup.sh`` creates it), else ``nobody``. The
venv uses Debian's ``/usr/bin/python3``: the checkout's venv links to a Python
that other users may not be able to execute (pyenv under /root).
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import NETWORK_ERROR
from pytest_qemublock.host import procfs

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3"
USERS = ("qbtest", "nobody")
#: these must have run, none of their cases skipped (file-rw: see BUILD_SKIPS)
MUST_RUN = ("file-erofs", "file-eacces", *(f"nbd-{s}-unix-{st}" for s in ("qemu-nbd", "qsd", "nbdkit",
                                                                          "qemu-export")
                                           for st in ("rw", "ro")))
#: every reason a user's run may skip for: what needs root, and why
ROOT_SKIPS = (
    "no sandbox (not root: setns() into a new PID/network namespace needs CAP_SYS_ADMIN): "
    "a TCP server would listen on the host's 127.0.0.1, where every user of the machine "
    "can connect to it",
    "hostdev needs root: losetup attaches loop devices only for root",
)
#: what the default build lacks (QEMU 7.2: the inactive suite needs 10.0), root or not
BUILD_SKIPS = (
    "build default: no QMP command blockdev-set-active; no member 'active' in BlockDeviceInfo "
    "(query-named-block-nodes)",
)
KNOWN_SKIPS = ROOT_SKIPS + BUILD_SKIPS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or not procfs.in_host_user_namespace(),
                       reason="runs pytest as another uid: needs root of the host"),
    pytest.mark.skipif(not os.access(PYTHON, os.X_OK), reason=f"needs {PYTHON} (Debian python3-venv)"),
]


def _user() -> pwd.struct_passwd:
    for name in USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.skip(f"no unprivileged user {' or '.join(USERS)} (scripts/setup.sh creates qbtest)")


def _run(argv: list[str], what: str, timeout: float, user: pwd.struct_passwd | None = None,
         env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if user is not None:
        # --pdeathsig: a killed outer run takes the inner one along (its QEMUs follow it)
        argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
                "--pdeathsig", "KILL", "--", "env", "-i", *(f"{k}={v}" for k, v in (env or {}).items()),
                *argv]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, check=False, cwd=cwd)
    if proc.returncode != 0 and what:
        found = NETWORK_ERROR.search(proc.stdout)
        if found:
            pytest.skip(f"no network to the package index ({found.group(0)}): {what} failed")
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc


@dataclass
class UserEnv:
    user: pwd.struct_passwd
    env: dict[str, str]
    home: Path
    clone: Path
    venv: Path
    setup_s: float


@pytest.fixture(scope="module")
def user_env() -> Iterator[UserEnv]:
    """The user's venv with the plugin and its clone of the suites, in a temp dir other
    uids can traverse (pytest's tmp_path is root's, 0700)."""
    world_dir = Path(tempfile.mkdtemp(prefix="qemublock-nonroot-", dir="/tmp"))
    os.chmod(world_dir, 0o755)
    try:
        yield _user_env(world_dir)
    finally:
        shutil.rmtree(world_dir, ignore_errors=True)


def _user_env(world_dir: Path) -> UserEnv:
    user = _user()
    t0 = time.monotonic()
    # root builds the wheels (its pip cache, its index access): world-readable
    src, wheels = world_dir / "build-src", world_dir / "wheels"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "pytest_qemublock"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(
            ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                       if (ROOT / name).is_dir() else {}))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), str(src)],
         "pip wheel (the checkout and its dependencies)", 600)
    for p in wheels.iterdir():
        os.chmod(p, 0o644)

    # the user's home: its clone of the suites and its venv
    home = world_dir / "home"
    clone = home / "src"
    clone.mkdir(parents=True)
    shutil.copy(ROOT / "conftest.py", clone)
    shutil.copy(ROOT / "pyproject.toml", clone)
    shutil.copytree(ROOT / "suites", clone / "suites", ignore=shutil.ignore_patterns("__pycache__"))
    for p in [home, *home.rglob("*")]:
        os.chown(p, user.pw_uid, user.pw_gid, follow_symlinks=False)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home),
           "PIP_CACHE_DIR": str(home / ".pip-cache"), "LANG": "C.UTF-8"}
    venv = home / "venv"
    _run([PYTHON, "-m", "venv", str(venv)], "python3 -m venv (as the user)", 120, user, env)
    _run([str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(wheels),
          "pytest-qemublock"], "pip install (as the user)", 300, user, env)
    return UserEnv(user, env, home, clone, venv, time.monotonic() - t0)


def test_user_run_is_green(user_env: UserEnv) -> None:
    user, env, home = user_env.user, user_env.env, user_env.home
    t0 = time.monotonic()
    results = home / "results.json"
    proc = _run([str(user_env.venv / "bin" / "pytest"), "suites", "-n", "2", "-q", "-p",
                 "no:cacheprovider", "--qb-results", str(results)], "", 600, user, env,
                cwd=user_env.clone)
    run_s = time.monotonic() - t0
    tail = proc.stdout[-3000:]
    assert proc.returncode == 0, f"the user's run exited {proc.returncode}:\n{tail}"
    data = json.loads(results.read_text())
    totals = data["totals"]
    assert not set(totals) - {"passed", "skipped", "xfailed"}, f"the user's run: {totals}\n{tail}"

    tests = data["tests"].values()
    ran = Counter(t["backend"] for t in tests if t["outcome"] != "skipped")
    skipped = Counter(t["backend"] for t in tests if t["outcome"] == "skipped")
    not_run = {b: skipped[b] for b in MUST_RUN if skipped[b] or not ran[b]}
    reasons = Counter(t.get("message", "") for t in tests if t["outcome"] == "skipped")
    assert not not_run, (f"as uid {user.pw_uid}, these backends skipped cases (or ran none): "
                         f"{not_run}; skip reasons: {dict(reasons)}")
    unknown = {r: n for r, n in reasons.items() if r not in KNOWN_SKIPS}
    assert not unknown, f"as uid {user.pw_uid}, cases skipped for reasons not known to need root: {unknown}"
    left = _run(["pgrep", "-a", "-u", str(user.pw_uid)], "", 10)
    assert left.returncode == 1, f"processes of uid {user.pw_uid} left after its run:\n{left.stdout}"
    print(f"uid {user.pw_uid} ({user.pw_name}): {totals}, skips {dict(reasons)}; "
          f"set-up {user_env.setup_s:.1f}s, run {run_s:.1f}s")


#: run as the user under ``unshare -r -m``: what the plugin makes of uid 0 of a user namespace
UNSHARE_R = """
import json
from pytest_qemublock.host import journal, sandbox
from pytest_qemublock.storage import local
d = journal.default_state_dir()
journal.StateDir(d).close()
print(json.dumps({"state_dir": d.name, "sandbox": sandbox.unavailable_reason(),
                  "erofs": local.unavailable_reason("erofs"),
                  "eacces": local.unavailable_reason("eacces")}))
"""


def test_user_namespace_root_is_a_user(user_env: UserEnv) -> None:
    """Under ``unshare -r -m`` the user is uid 0: the state dir is still the user's (not
    root's ``qemublock-0-procs``, refused), erofs and eacces work, the sandbox says why not."""
    user = user_env.user
    # as in a shared /tmp: root's own state dir, which uid 0 of the namespace must not take
    (user_env.home / "qemublock-0-procs").mkdir(mode=0o700, exist_ok=True)
    proc = _run(["unshare", "-r", "-m", str(user_env.venv / "bin" / "python"), "-c", UNSHARE_R],
                "python under unshare -r -m (as the user)", 60, user, user_env.env, cwd=user_env.home)
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts == {
        "state_dir": f"qemublock-{user.pw_uid}-procs",
        "sandbox": "uid 0 of a user namespace (unshare -r): setns() back into the host's PID "
                   "namespace needs CAP_SYS_ADMIN in the host's user namespace",
        "erofs": None,
        "eacces": None,
    }, proc.stdout
