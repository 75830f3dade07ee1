#!/usr/bin/env python3
"""Benchmark: what a suite case costs next to a bare QEMU launch, and how long the matrix takes.

Measures, in one run:

* the bare cycle, per build: ``qemu-system-x86_64 -M none`` started with a QMP
  monitor on a socketpair (the command line machine.py uses), capabilities
  negotiated with qemu.qmp's ``QMPClient``, ``quit``, process reaped. No
  harness: plain ``subprocess.Popen``. Median of ``--bare`` cycles (default 20);
* the harness cycle, per build: the same through the plugin's own
  ``machine.launch`` + ``shutdown`` (process registry, log files, QMP
  transcript), to tell the harness's share from the suites' own work;
* the suites (``--suites``, default ``suites``), run by pytest in a
  subprocess with ``--qb-results``: each case's cost is its setup + call +
  teardown time from the results file; the ratio compares each case with the
  bare cycle of its own build;
* the QEMU processes each case started (qemu-system, qemu-storage-daemon,
  qemu-nbd, qemu-img, qemu-io), as counted by the report plugin where the
  harness starts them (``host/process.py``) in the pytest process that ran the case;
* the wall time of the whole run, serially and with ``-n 2`` (``--workers``), and the
  CPU time (user + system) of each run with every process it started, per case;
* the parallel efficiency: the ``-n 2`` wall time divided by (cases x bare cycle). One
  QEMU launch per case on 2 cores bounds it near 0.5;
* with ``--project-tests``, the wall time of the project's own tests at ``-n 2`` (a plain
  run: without the ``slow`` ones).

Writes everything to ``bench/results.json`` (``--out``) and prints a table.

    bench/bench.py --builds b72=/ b10=/var/cache/pytest-qemublock/qemu-10.0
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.1  # case median / bare cycle
TARGET_WALL = 60.0  # -n 2, two builds
TARGET_EFFICIENCY = 0.7  # wall(-n 2) / (cases x bare cycle)
TARGET_SPEEDUP = 1.85  # serial wall / -n 2 wall
TARGET_PROJECT_TESTS = 30.0  # seconds, project tests at -n 2
#: processes that run a guest-less QEMU block layer; the expensive ones to start
LAUNCHES = ("qemu-system-x86_64", "qemu-storage-daemon")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--builds", nargs="+", default=[], metavar="[NAME=]DIR",
                   help="builds to test (each becomes a --qemu-build); default: the default "
                        "build (PATH, $QEMU_PROG...). The wall-time target is for two builds")
    p.add_argument("--suites", nargs="+", default=["suites"], metavar="PATH",
                   help="test paths to run (default: suites)")
    p.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    p.add_argument("--bare", type=int, default=20, metavar="N",
                   help="bare (and harness) cycles per build for the medians (default 20)")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="xdist workers of the parallel run (default 2; 0 skips it)")
    p.add_argument("--repeat", type=int, default=1, metavar="R",
                   help="run each suite configuration R times; wall times are medians")
    p.add_argument("--no-serial", action="store_true",
                   help="skip the serial run (per-case figures then come from the parallel one)")
    p.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                   help="extra pytest argument (repeatable), e.g. --pytest-arg=--qb-evidence=none")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json",
                   help="where to write the figures (default bench/results.json)")
    p.add_argument("--timeout", type=float, default=3600, help="limit per pytest run, seconds")
    p.add_argument("--project-tests", action="store_true",
                   help="also time the project's own tests (pytest -n 2 in the repository)")
    args = p.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    builds = resolve_builds(args.builds)
    out: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "load_before": os.getloadavg()},
        "builds": {b.name: {"version": b.version_str, "qemu_system": str(b.path("system"))}
                   for b in builds},
        "options": {"suites": args.suites, "k": args.keyword, "bare_cycles": args.bare,
                    "workers": args.workers, "repeat": args.repeat,
                    "pytest_args": args.pytest_arg},
    }

    # -- bare and harness cycles ----------------------------------------------------------
    out["bare"], out["harness"] = {}, {}
    for b in builds:
        accel = pick_accel(b)
        log(f"bare cycle, build {b.name} (QEMU {b.version_str}, accel {accel}): {args.bare} runs")
        bare = [bare_cycle(b, accel) for _ in range(args.bare)]
        out["bare"][b.name] = summary(bare) | {"accel": accel}
        log(f"harness cycle, build {b.name}: {args.bare} runs")
        out["harness"][b.name] = summary(harness_cycles(b, accel, args.bare))

    # -- the suites ---------------------------------------------------------------------------
    base = [sys.executable, "-m", "pytest", *args.suites, "-q", "--qb-no-summary",
            "-p", "no:randomly", "-p", "no:random_order"]
    for spec in args.builds:
        base.append(f"--qemu-build={spec}")
    if args.keyword:
        base += ["-k", args.keyword]
    base += args.pytest_arg
    runs: dict[str, Any] = {}
    modes = ([] if args.no_serial else [("serial", [])]) + (
        [(f"n{args.workers}", ["-n", str(args.workers)])] if args.workers else [])
    if not modes:
        p.error("nothing to run: --no-serial and --workers 0")
    with tempfile.TemporaryDirectory(prefix="qb-bench-") as tmp:
        for mode, extra in modes:
            walls, cpus, results = [], [], None
            for i in range(args.repeat):
                res_file = Path(tmp) / f"{mode}-{i}.json"
                cmd = base + extra + [f"--qb-results={res_file}"]
                log(f"{mode} run {i + 1}/{args.repeat}: {' '.join(cmd[2:])}")
                t0, cpu0 = time.monotonic(), children_cpu()
                proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, timeout=args.timeout,
                                      check=False)  # a failing run is reported below, not raised
                walls.append(time.monotonic() - t0)
                cpus.append(children_cpu() - cpu0)
                tail = proc.stdout.strip().splitlines()[-1:] or ["(no output)"]
                log(f"  {walls[-1]:.1f} s, exit {proc.returncode}: {tail[0]}")
                if not res_file.is_file():
                    print(proc.stdout[-4000:], file=sys.stderr)
                    log(f"{mode} run wrote no results file; giving up")
                    return 2
                results = json.loads(res_file.read_text())
            assert results is not None
            ran = sum(1 for t in results["tests"].values() if t["outcome"] != "skipped")
            runs[mode] = {"wall": summary(walls), "walls": [round(w, 3) for w in walls],
                          "cpu": summary(cpus),
                          "cpu_per_case": round(statistics.median(cpus) / max(ran, 1), 6),
                          "session_duration": results["duration"], "exitstatus": results["exitstatus"],
                          "totals": results["totals"],
                          "failing": {n: t["outcome"] for n, t in results["tests"].items()
                                      if t["outcome"] in ("failed", "error")},
                          "results": results}

    # -- figures -----------------------------------------------------------------------------
    per_case_source = "serial" if "serial" in runs else modes[0][0]
    res = runs[per_case_source]["results"]
    out["cases"] = case_figures(res, out["bare"])
    out["runs"] = {m: {k: v for k, v in r.items() if k != "results"} for m, r in runs.items()}
    if "serial" in runs and len(runs) > 1:
        par = next(m for m in runs if m != "serial")
        a = {n: t["outcome"] for n, t in runs["serial"]["results"]["tests"].items()}
        b = {n: t["outcome"] for n, t in runs[par]["results"]["tests"].items()}
        common = set(a) & set(b)
        # Suites may change between the two runs: compare the cases both ran.
        out["runs"][par]["same_outcomes_as_serial"] = all(a[n] == b[n] for n in common)
        out["runs"][par]["outcome_differences"] = {n: [a[n], b[n]] for n in sorted(common)
                                                   if a[n] != b[n]}
        out["runs"][par]["cases_in_one_run_only"] = len(set(a) ^ set(b))
        out["runs"][par]["speedup"] = round(runs["serial"]["wall"]["median"]
                                            / runs[par]["wall"]["median"], 2)
    par_mode = f"n{args.workers}"
    if par_mode in out["runs"]:
        bare_mean = statistics.fmean(v["median"] for v in out["bare"].values())
        cost = out["cases"]["ran"] * bare_mean
        out["runs"][par_mode]["efficiency"] = round(out["runs"][par_mode]["wall"]["median"] / cost, 3)
    if args.project_tests:
        log("project tests: pytest -n 2")
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=args.timeout, check=False)
        wall = time.monotonic() - t0
        tail = proc.stdout.strip().splitlines()[-1:] or ["(no output)"]
        out["project_tests"] = {"wall": round(wall, 2), "exit": proc.returncode, "summary": tail[0]}
        log(f"  {wall:.1f} s, exit {proc.returncode}: {tail[0]}")
    out["targets"] = targets(out, len(builds), args.workers)
    out["host"]["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print_table(out)
    print(f"\nwritten to {args.out}")
    return 0


def children_cpu() -> float:
    """User + system CPU seconds of every waited-for descendant so far (QEMUs included:
    each process is reaped by its parent, so its time adds up to ours)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def summary(values: list[float]) -> dict[str, Any]:
    values = sorted(values)
    if not values:
        return {"n": 0}
    q = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
    return {"n": len(values), "median": round(statistics.median(values), 6),
            "mean": round(statistics.fmean(values), 6), "min": round(values[0], 6),
            "p10": round(q[0], 6), "p90": round(q[-1], 6), "max": round(values[-1], 6)}


# -- builds and cycles -------------------------------------------------------------------------


def resolve_builds(specs: list[str]) -> list[Any]:
    from pytest_qemublock.qemu import build as build_mod

    if specs:
        return build_mod.resolve_builds(specs, lambda: None)  # type: ignore[arg-type,return-value]
    # What the plugin resolves without options: $QEMU_PROG & co., then PATH.
    return [build_mod.resolve_default_build(lambda o: None, lambda i: None, None)]


def pick_accel(build: Any) -> str:
    """The accelerator the plugin's probe picks: qtest when the build has it."""
    from pytest_qemublock.qemu.capabilities import static_facts

    return "qtest" if "qtest" in static_facts(build, 60)["accelerators"] else "tcg"


def bare_cycle(build: Any, accel: str) -> float:
    """Seconds for launch -> QMP greeting + capabilities -> quit -> exit, no harness."""
    from qemu.qmp import QMPClient

    from pytest_qemublock.qemu.instance import qemu_argv

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    argv = qemu_argv("system", build, accel, "none", theirs.fileno(), [])
    loop = asyncio.new_event_loop()
    client = QMPClient("bare")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()], env={**os.environ, **build.env},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    theirs.close()
    try:
        loop.run_until_complete(asyncio.wait_for(client.connect(ours), 30))
        try:
            loop.run_until_complete(asyncio.wait_for(client.execute("quit"), 30))
        except Exception:  # noqa: BLE001 - QEMU may hang up before answering quit
            pass
        try:
            loop.run_until_complete(asyncio.wait_for(client.disconnect(), 30))
        except Exception:  # noqa: BLE001 - EOF: QEMU hung up after quit, as it should
            pass
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        loop.close()
        ours.close()
    elapsed = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"bare cycle: {argv[0]} exited with {code}")
    return elapsed


def harness_cycles(build: Any, accel: str, n: int) -> list[float]:
    """The same cycle through the plugin: registry.spawn, QmpSession, transcript, shutdown."""
    from pytest_qemublock.evidence import TestEvidence
    from pytest_qemublock.host.process import ProcessRegistry
    from pytest_qemublock.qemu.instance import Timeouts, launch

    registry = ProcessRegistry()
    times = []
    with tempfile.TemporaryDirectory(prefix="qb-bench-h-") as tmp:
        for i in range(n):
            evidence = TestEvidence(Path(tmp) / f"t{i}", f"bench {i}")
            t0 = time.perf_counter()
            vm = launch("system", build, [], accel=accel, registry=registry, evidence=evidence,
                        timeouts=Timeouts())
            vm.shutdown()
            registry.forget(vm.proc)
            times.append(time.perf_counter() - t0)
    registry.kill_all()
    return times


# -- per-case figures ----------------------------------------------------------------------------


def case_figures(results: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any]:
    """Cost and processes per case, from one run's results file.

    Only cases that ran (passed, failed, errored, xfailed/xpassed) count: a
    skipped case costs nothing and would flatter the median.
    """
    ran = {n: t for n, t in results["tests"].items() if t["outcome"] != "skipped"}
    skipped = len(results["tests"]) - len(ran)
    default_build = next(iter(bare))
    durations, ratios = [], []
    qemu_procs, launches = [], []
    by_build: dict[str, list[float]] = defaultdict(list)
    by_scenario: dict[str, list[tuple[float, int]]] = defaultdict(list)
    programs: Counter[str] = Counter()
    phases: dict[str, list[float]] = defaultdict(list)
    for t in ran.values():
        build = t.get("build") if t.get("build") in bare else default_build
        d = t["duration"]
        durations.append(d)
        ratios.append(d / bare[build]["median"])
        by_build[build].append(d)
        qemu_procs.append(t.get("qemu_procs", 0))
        launches.append(sum(t.get("procs", {}).get(p, 0) for p in LAUNCHES))
        by_scenario[t.get("scenario", "-")].append((d, t.get("qemu_procs", 0)))
        programs.update(t.get("procs", {}))
        for phase in ("setup", "call", "teardown"):
            phases[phase].append(t.get("phases", {}).get(phase, 0.0))
    n = len(ran)
    return {
        "ran": n, "skipped": skipped,
        "duration": summary(durations),
        "ratio_to_bare": summary(ratios),
        "phases_median": {k: round(statistics.median(v), 6) for k, v in phases.items()},
        "by_build": {b: summary(v) | {"ratio": round(statistics.median(v) / bare[b]["median"], 3)}
                     for b, v in by_build.items()},
        "qemu_procs_per_case": summary([float(x) for x in qemu_procs]),
        "launches_per_case": summary([float(x) for x in launches]),
        "programs_per_case": {p: round(c / n, 4) for p, c in programs.most_common()} if n else {},
        "processes_outside_cases": results.get("procs", {}).get("outside_tests", {}),
        "by_scenario": {s: {"cases": len(v), "median": round(statistics.median(d for d, _ in v), 6),
                            "qemu_procs_mean": round(statistics.fmean(q for _, q in v), 2)}
                        for s, v in sorted(by_scenario.items())},
    }


def targets(out: dict[str, Any], n_builds: int, workers: int) -> dict[str, Any]:
    ratio = out["cases"]["ratio_to_bare"].get("median")
    t: dict[str, Any] = {
        "per_case_ratio": {"target": TARGET_RATIO, "value": ratio,
                           "met": ratio is not None and ratio <= TARGET_RATIO},
    }
    par = out["runs"].get(f"n{workers}")
    if par is not None:
        wall = par["wall"]["median"]
        t["wall_parallel"] = {"target": TARGET_WALL, "value": round(wall, 2), "builds": n_builds,
                              "workers": workers, "met": wall <= TARGET_WALL,
                              "note": "" if n_builds == 2 and workers == 2
                              else "the target is for two builds with -n 2"}
        if "efficiency" in par:
            t["efficiency"] = {"target": TARGET_EFFICIENCY, "value": par["efficiency"],
                               "met": par["efficiency"] <= TARGET_EFFICIENCY}
        if "speedup" in par:
            t["speedup"] = {"target": TARGET_SPEEDUP, "value": par["speedup"],
                            "met": par["speedup"] >= TARGET_SPEEDUP}
    if "project_tests" in out:
        wall = out["project_tests"]["wall"]
        t["project_tests"] = {"target": TARGET_PROJECT_TESTS, "value": wall,
                              "met": wall <= TARGET_PROJECT_TESTS and out["project_tests"]["exit"] == 0}
    return t


def print_table(out: dict[str, Any]) -> None:
    print()
    print(f"{'build':<10} {'version':<9} {'bare cycle':>11} {'harness cycle':>14} "
          f"{'case median':>12} {'case/bare':>10}")
    for name, info in out["builds"].items():
        bare = out["bare"][name]["median"]
        harness = out["harness"][name]["median"]
        case = out["cases"]["by_build"].get(name, {})
        print(f"{name:<10} {info['version']:<9} {bare * 1000:>8.1f} ms {harness * 1000:>11.1f} ms "
              f"{case.get('median', float('nan')) * 1000:>9.1f} ms {case.get('ratio', float('nan')):>9.2f}x")
    c = out["cases"]
    print(f"\ncases that ran: {c['ran']} (skipped: {c['skipped']}); per case: median "
          f"{c['duration']['median'] * 1000:.1f} ms, p90 {c['duration']['p90'] * 1000:.1f} ms; "
          f"ratio to the bare cycle: median {c['ratio_to_bare']['median']:.2f}x "
          f"(target <= {TARGET_RATIO}x)")
    print("  phase medians: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in c["phases_median"].items()))
    print(f"QEMU processes started per case: mean {c['qemu_procs_per_case']['mean']:.2f}, median "
          f"{c['qemu_procs_per_case']['median']:.0f}, max {c['qemu_procs_per_case']['max']:.0f}; "
          f"of them qemu-system/qsd launches: mean {c['launches_per_case']['mean']:.2f}")
    print("  per case: " + ", ".join(f"{p} {n:g}" for p, n in c["programs_per_case"].items()))
    if len(c["by_scenario"]) > 1 or "-" not in c["by_scenario"]:
        print(f"\n{'scenario':<16} {'cases':>6} {'median':>10} {'QEMU procs':>11}")
        for s, v in c["by_scenario"].items():
            print(f"{s:<16} {v['cases']:>6} {v['median'] * 1000:>7.1f} ms {v['qemu_procs_mean']:>11.2f}")
    if "project_tests" in out:
        pt = out["project_tests"]
        print(f"\nproject tests (-n 2): {pt['wall']:.1f} s, exit {pt['exit']}: {pt['summary']}")
    print(f"\n{'run':<8} {'wall (median)':>14} {'session':>9}  outcome")
    for mode, r in out["runs"].items():
        extra = ""
        if "same_outcomes_as_serial" in r:
            extra = (f"; speedup {r['speedup']}x; same outcomes as serial: "
                     f"{r['same_outcomes_as_serial']}")
            if r["cases_in_one_run_only"]:
                extra += f" (cases in one run only: {r['cases_in_one_run_only']})"
        if "efficiency" in r:
            extra += f"; wall / (cases x bare) {r['efficiency']:.2f}"
        print(f"{mode:<8} {r['wall']['median']:>12.1f} s {r['session_duration']:>7.1f} s  "
              f"{r['totals']} (exit {r['exitstatus']}){extra}")
        print(f"{'':<8} CPU {r['cpu']['median']:.1f} s, {r['cpu_per_case'] * 1000:.1f} ms per case")
        for nodeid, outcome in list(r["failing"].items())[:5]:
            print(f"{'':<8} {outcome}: {nodeid}")
    print()
    for name, t in out["targets"].items():
        note = f" ({t['note']})" if t.get("note") else ""
        value = f"{t['value']:.2f}" if isinstance(t["value"], float) else t["value"]
        print(f"target {name}: {value} vs {t['target']}: {'met' if t['met'] else 'NOT met'}{note}")


if __name__ == "__main__":
    sys.exit(main())
