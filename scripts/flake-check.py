#!/usr/bin/env python3
"""Parallel correctness: same results serially and with -n 2 / -n 4, in shuffled order, no leftovers.

Runs the suites ``--runs`` times (default 20) in each mode (default: serial,
-n 2, -n 4), every run in a different random order (pytest-random-order,
``--random-order-bucket=global`` by default, with a seed per run, which xdist hands to
its workers), and compares each case's outcome (from ``--qb-results``) with
the first serial run. After every run it looks for what the run left behind:

* processes: anything still alive that carries the run's token in its
  environment (every child inherits it, even one that called setsid()) or
  that is in the run's session (pytest is started in a new session);
* mounts: /proc/mounts entries below the run's work dir or new ones below /tmp/qb* or /dev/shm/qb*;
* locks: /proc/locks entries that are new since before the run, held on a
  file below the run's work dir or by one of the run's processes;
* files: sockets (or anything else) left in the run's work dir
  (``--qb-basetemp``), which the plugin empties at session end.

New qemu*/nbdkit processes and /tmp/qb* and /dev/shm/qb* mounts that cannot be tied to the run
are reported as "unattributed" (another session on the machine may own them)
and do not count as leftovers.

Prints one line per run, a flake count at the end; exit status 1 when any
case changed outcome or anything was left behind, 2 on a usage problem.

    scripts/flake-check.py                         # 20 x (serial, -n 2, -n 4)
    scripts/flake-check.py --runs 3 -k smoke --builds b72=/usr b10=DIR
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN_VAR = "QB_FLAKE_TOKEN"
WATCHED = ("qemu", "nbdkit")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20, help="runs per mode (default 20)")
    p.add_argument("--modes", default="serial,2,4",
                   help="comma-separated: 'serial' and/or worker counts (default serial,2,4)")
    p.add_argument("--suites", nargs="+", default=["suites"], metavar="PATH")
    p.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    p.add_argument("--builds", nargs="+", default=[], metavar="[NAME=]DIR",
                   help="--qemu-build for each (default: the default build)")
    p.add_argument("--bucket", default="global",
                   choices=["global", "package", "module", "class", "parent", "grandparent"],
                   help="pytest-random-order bucket (default global: any case may follow any "
                        "other; module keeps each module's cases together, so the module-wide "
                        "shared targets are started once per run, not once per stretch)")
    p.add_argument("--seed", type=int, default=None,
                   help="base seed (default: random); run i of mode m uses a seed derived from it")
    p.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                   help="extra pytest argument (repeatable)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where run directories go (default: a new qbf-* in /dev/shm or /tmp); kept if "
                        "something went wrong")
    p.add_argument("--timeout", type=float, default=1800, help="limit per pytest run, seconds")
    p.add_argument("--live", action="store_true",
                   help="run the work tree itself; by default the runs use a copy of it taken "
                        "at the start, so that edits made meanwhile (a shared tree) do not "
                        "show up as flakes")
    p.add_argument("--stop", action="store_true", help="stop at the first flake or leftover")
    p.add_argument("--json", type=Path, default=None, help="also write the findings as JSON here")
    args = p.parse_args(argv)

    if importlib.util.find_spec("random_order") is None:
        print("flake-check: needs pytest-random-order in this Python (pip install -e '.[bench]')",
              file=sys.stderr)
        return 2
    modes = []
    for raw in args.modes.split(","):
        m = raw.strip()
        if m != "serial" and not m.isdigit():
            p.error(f"--modes: {m!r} is neither 'serial' nor a worker count")
        modes.append(m)
    if "serial" not in modes:
        print("flake-check: no serial mode: the first run of the first mode is the reference",
              file=sys.stderr)
    base_seed = args.seed if args.seed is not None else random.randrange(1, 10**6)
    # Where the suites' work dirs go by default (/dev/shm if a roomy tmpfs): what CI runs.
    from pytest_qemublock.session import default_basetemp

    work = args.workdir or Path(tempfile.mkdtemp(prefix="qbf-", dir=default_basetemp() or "/tmp"))
    # eacces storage runs QEMU as uid 65534: it must be able to traverse this.
    work.chmod(0o755)
    work.mkdir(parents=True, exist_ok=True)
    tree = ROOT if args.live else snapshot_tree(work / "tree")
    print(f"flake-check: {args.runs} run(s) x modes {', '.join(modes)}; bucket {args.bucket}; "
          f"base seed {base_seed}; "
          f"work dir {work}; testing {'the live tree' if args.live else f'a copy of {ROOT}'}",
          flush=True)

    reference: dict[str, str] | None = None
    ref_label = ""
    flakes: list[dict[str, Any]] = []
    leftovers: list[dict[str, Any]] = []
    unattributed: list[str] = []
    per_mode: dict[str, Counter[str]] = defaultdict(Counter)
    outcomes_seen: dict[str, Counter[str]] = defaultdict(Counter)
    walls: dict[str, list[float]] = defaultdict(list)
    t_start = time.monotonic()
    for i in range(1, args.runs + 1):
        for mode in modes:
            seed = (base_seed * 1000 + i * 10 + (0 if mode == "serial" else int(mode))) % (2**31)
            label = f"run {i:2d} {mode:>6}"
            res = run_once(args, work, tree, i, mode, seed)
            walls[mode].append(res["wall"])
            problems = []
            outcomes = res["outcomes"]
            if outcomes is None:
                problems.append(f"no results file (exit {res['exit']}): {res['tail']}")
                flakes.append({"run": i, "mode": mode, "seed": seed, "case": "(whole run)",
                               "reference": "results", "got": f"exit {res['exit']}"})
            elif reference is None:
                reference, ref_label = outcomes, f"{label.strip()} (seed {seed})"
            else:
                for case in sorted(set(reference) | set(outcomes)):
                    want, got = reference.get(case, "(absent)"), outcomes.get(case, "(absent)")
                    if want != got:
                        flakes.append({"run": i, "mode": mode, "seed": seed, "case": case,
                                       "reference": want, "got": got,
                                       "message": res["messages"].get(case, "")})
                        problems.append(f"{case}: {want} -> {got}")
            if outcomes:
                for case, o in outcomes.items():
                    outcomes_seen[case][o] += 1
            for kind, what in res["leftovers"]:
                leftovers.append({"run": i, "mode": mode, "seed": seed, "kind": kind, "what": what})
                problems.append(f"left behind: {kind}: {what}")
            unattributed += [f"run {i} {mode}: {u}" for u in res["unattributed"]]
            per_mode[mode]["runs"] += 1
            per_mode[mode]["flaky runs"] += bool(problems)
            totals = Counter(outcomes.values()) if outcomes else Counter()
            status = "ok" if not problems else f"{len(problems)} problem(s)"
            print(f"{label}  seed {seed:>10}  {res['wall']:6.1f} s  "
                  f"{dict(sorted(totals.items()))}  {status}", flush=True)
            for line in problems[:20]:
                print(f"    {line}")
            if len(problems) > 20:
                print(f"    ... and {len(problems) - 20} more")
            if problems:
                print(f"    reproduce: {' '.join(res['cmd'])}")
            if not res["leftovers"]:
                shutil.rmtree(res["dir"], ignore_errors=True)
            if problems and args.stop:
                return finish(args, work, flakes, leftovers, unattributed, per_mode, walls,
                              outcomes_seen, ref_label, base_seed, t_start)
    return finish(args, work, flakes, leftovers, unattributed, per_mode, walls, outcomes_seen,
                  ref_label, base_seed, t_start)


def finish(args: argparse.Namespace, work: Path, flakes: list[dict[str, Any]],
           leftovers: list[dict[str, Any]], unattributed: list[str],
           per_mode: dict[str, Counter[str]], walls: dict[str, list[float]],
           outcomes_seen: dict[str, Counter[str]], ref_label: str, base_seed: int,
           t_start: float) -> int:
    flaky_cases = sorted({f["case"] for f in flakes})
    print()
    print(f"reference: {ref_label}; base seed {base_seed}; "
          f"total {time.monotonic() - t_start:.0f} s")
    for mode, c in per_mode.items():
        w = sorted(walls[mode])
        print(f"  {mode:>6}: {c['runs']} runs, {c['flaky runs']} with problems, "
              f"wall median {w[len(w) // 2]:.1f} s")
    print(f"flakes: {len(flakes)} (cases: {len(flaky_cases)}); leftovers: {len(leftovers)}")
    for case in flaky_cases[:30]:
        print(f"  {case}: " + ", ".join(f"{o} x{n}" for o, n in outcomes_seen[case].most_common()))
    if unattributed:
        print(f"unattributed (another session's?), not counted: {len(unattributed)}")
        for u in unattributed[:10]:
            print(f"  {u}")
    if args.json:
        args.json.write_text(json.dumps({
            "base_seed": base_seed, "reference": ref_label, "flakes": flakes,
            "flaky_cases": {c: dict(outcomes_seen[c]) for c in flaky_cases},
            "leftovers": leftovers, "unattributed": unattributed,
            "modes": {m: dict(c) | {"walls": [round(x, 2) for x in walls[m]]}
                      for m, c in per_mode.items()},
        }, indent=1) + "\n")
    if leftovers:
        print(f"run directories with leftovers kept in {work}")
    elif args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if flakes or leftovers else 0


# -- one run ---------------------------------------------------------------------------------------


def snapshot_tree(dest: Path) -> Path:
    """A copy of the project (plugin, suites, images...) to run, immune to concurrent edits.

    Run from there, ``import pytest_qemublock`` finds the copy first (the
    current directory precedes the editable install's finder).
    """
    skip = shutil.ignore_patterns(".git", ".venv", ".pytest_cache", "__pycache__", "*.egg-info",
                                  "qemublock-evidence", "results*.json")
    shutil.copytree(ROOT, dest, ignore=skip, symlinks=True)
    return dest


def run_once(args: argparse.Namespace, work: Path, tree: Path, i: int, mode: str,
             seed: int) -> dict[str, Any]:
    run_dir = work / f"{i:02d}-{mode}"
    run_dir.mkdir()
    basetemp = run_dir / "t"
    results = run_dir / "results.json"
    cmd = [sys.executable, "-m", "pytest", *args.suites, "-q", "--qb-no-summary",
           "-p", "random_order", f"--random-order-bucket={args.bucket}", f"--random-order-seed={seed}",
           f"--qb-results={results}", f"--qb-basetemp={basetemp}",
           f"--qb-evidence-dir={run_dir / 'evidence'}"]
    if mode != "serial":
        cmd += ["-n", mode]
    cmd += [f"--qemu-build={b}" for b in args.builds]
    if args.keyword:
        cmd += ["-k", args.keyword]
    cmd += args.pytest_arg
    token = uuid.uuid4().hex
    env = {**os.environ, TOKEN_VAR: token}
    env.pop("PYTEST_ADDOPTS", None)
    before = snapshot()
    t0 = time.monotonic()
    with open(run_dir / "output.txt", "w") as out:
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            code = proc.wait()
    wall = time.monotonic() - t0
    sid = proc.pid
    outcomes = messages = None
    if results.is_file():
        data = json.loads(results.read_text())
        outcomes = {n: t["outcome"] for n, t in data["tests"].items()}
        messages = {n: t.get("message", "") for n, t in data["tests"].items()}
    tail = (run_dir / "output.txt").read_text(errors="replace").strip().splitlines()[-1:]
    time.sleep(0.2)  # let children that got SIGKILL with their parent be reaped
    found, unattributed = leftovers_of(token, sid, basetemp, before)
    return {"wall": wall, "exit": code, "outcomes": outcomes, "messages": messages or {},
            "leftovers": found, "unattributed": unattributed, "dir": run_dir,
            "tail": tail[0] if tail else "(no output)", "cmd": cmd}


# -- leftovers ---------------------------------------------------------------------------------------


def snapshot() -> dict[str, Any]:
    return {"procs": set(watched_procs()), "mounts": set(qb_mounts()), "locks": set(lock_keys()),
            "qbs": set(Path("/tmp").glob("qbs-*"))}


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _procs() -> list[str]:
    return [d for d in os.listdir("/proc") if d.isdigit()]


def _stat_fields(pid: str) -> list[str]:
    text = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return text.rsplit(")", 1)[1].split() if ")" in text else []


def watched_procs() -> list[tuple[str, str]]:
    out = []
    for pid in _procs():
        comm = _read(f"/proc/{pid}/comm").decode(errors="replace").strip()
        fields = _stat_fields(pid)
        if comm.startswith(WATCHED) and fields and fields[0] != "Z":
            out.append((pid, comm))
    return out


def qb_mounts() -> list[str]:
    out = []
    for line in _read("/proc/mounts").decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) > 1 and parts[1].startswith(("/tmp/qb", "/tmp/qemublock", "/dev/shm/qb")):
            out.append(parts[1])
    return out


def lock_keys() -> list[tuple[str, str, str]]:
    """(kind, holder pid, dev:inode) of each lock in /proc/locks."""
    out = []
    for line in _read("/proc/locks").decode(errors="replace").splitlines():
        parts = line.split()
        if parts and parts[1] == "->":
            continue  # a waiter, not a lock
        if len(parts) >= 6:
            out.append((parts[1], parts[4], parts[5]))
    return out


def leftovers_of(token: str, sid: int, basetemp: Path, before: dict[str, Any]
                 ) -> tuple[list[tuple[str, str]], list[str]]:
    found: list[tuple[str, str]] = []
    needle = f"{TOKEN_VAR}={token}".encode()
    ours: set[str] = set()
    for pid in _procs():
        fields = _stat_fields(pid)
        if not fields or fields[0] == "Z":
            continue
        in_session = len(fields) > 3 and fields[3] == str(sid)
        if in_session or needle in _read(f"/proc/{pid}/environ").split(b"\0"):
            ours.add(pid)
            cmd = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")
            found.append(("process", f"pid {pid}: {cmd.strip()[:200]}"))
    base = str(basetemp)
    unattributed: list[str] = []
    for m in set(qb_mounts()) - before["mounts"]:
        if m.startswith(base):
            found.append(("mount", m))
        else:
            unattributed.append(f"new mount {m}")
    for m in qb_mounts():
        if m.startswith(base) and ("mount", m) not in found:
            found.append(("mount", m))
    new_locks = set(lock_keys()) - before["locks"]
    if new_locks:
        holders = inode_holders({key for _, _, key in new_locks})
        for kind, pid, key in sorted(new_locks):
            paths = holders.get(key, [])
            mine = pid in ours or any(path.startswith(base) or hpid in ours for hpid, path in paths)
            where = ", ".join(f"{path} (pid {hpid})" for hpid, path in paths[:3]) or key
            if mine:
                found.append(("lock", f"{kind} {where}"))
            else:
                unattributed.append(f"new lock {kind} {where}")
    if basetemp.exists():
        for path in sorted(basetemp.rglob("*")):
            try:
                mode = path.lstat().st_mode
            except OSError:
                continue
            if stat.S_ISSOCK(mode):
                found.append(("socket", str(path)))
            elif not path.is_dir():
                found.append(("file", str(path)))
        dirs = [d for d in basetemp.rglob("*") if d.is_dir()]
        if dirs and not any(k in ("socket", "file") for k, _ in found):
            found.append(("directory", f"{len(dirs)} left below {basetemp}, e.g. {dirs[0]}"))
    for d in set(Path("/tmp").glob("qbs-*")) - before["qbs"]:
        unattributed.append(f"new socket dir {d}")
    new_procs = set(watched_procs()) - before["procs"]
    for pid, comm in sorted(new_procs):
        if pid not in ours:
            unattributed.append(f"new process {pid} {comm}")
    return found, unattributed


def inode_holders(keys: set[str]) -> dict[str, list[tuple[str, str]]]:
    """dev:inode (as /proc/locks writes it, hex major:minor) -> [(pid, path)] of open fds."""
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for pid in _procs():
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
            if key in keys:
                try:
                    path = os.readlink(f"{fd_dir}/{fd}")
                except OSError:
                    path = "?"
                out[key].append((pid, path))
    return out


if __name__ == "__main__":
    sys.exit(main())
