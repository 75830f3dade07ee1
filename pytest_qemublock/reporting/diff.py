"""``qemublock-diff``: what changed between two results files, or two builds in one.

Cases are matched by test id without the build's id part (the results file's
``case``); the exit status is 1 when a case that passed in A fails in B.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .fold import FAILING, MISSING, OUTCOMES, PASSING, strip_build
from .results import ResultsError, entry_build, load_results


class DiffError(ResultsError):
    """The files or builds given cannot be compared."""


@dataclass
class Side:
    """One side of the comparison: a results file, or one build of it."""

    label: str
    data: dict[str, Any]
    build: str | None
    tests: dict[str, dict[str, Any]]  # nodeid -> test

    @property
    def builds(self) -> list[str]:
        seen = {entry_build(t, self.data) for t in self.tests.values()}
        order = [b for b in self.data.get("build_order") or [] if b in seen]
        return order + sorted(seen - set(order))

    def describe(self) -> str:
        builds = self.builds
        info = self.data.get("builds") or {}
        parts = [f"{b} (QEMU {info[b]['version']})" if b in info and info[b].get("version")
                 else b for b in builds if b != MISSING]
        totals = Counter(str(t.get("outcome")) for t in self.tests.values())
        counts = ", ".join(f"{totals[o]} {o}" for o in OUTCOMES if totals[o])
        where = f" build {', '.join(parts)}" if parts else ""
        return f"{self.label}:{where}: {len(self.tests)} cases ({counts or 'none'})"


def _side(label: str, data: dict[str, Any], build: str | None) -> Side:
    tests = data.get("tests") or {}
    if build is not None:
        available = sorted({entry_build(t, data) for t in tests.values()})
        tests = {n: t for n, t in tests.items() if entry_build(t, data) == build}
        if not tests:
            raise DiffError(f"{label} has no cases of build {build!r} "
                            f"(builds there: {', '.join(available) or 'none'})")
    return Side(label, data, build, dict(tests))


def _file_builds(data: dict[str, Any]) -> set[str]:
    return {entry_build(t, data) for t in (data.get("tests") or {}).values()}


def _keyed(side: Side, with_build: bool) -> dict[str, tuple[str, dict[str, Any]]]:
    """The side's tests keyed by case id (the test id without the build's id part)."""
    multi = len(_file_builds(side.data)) > 1 or len(side.data.get("build_order") or []) > 1
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for nodeid, t in side.tests.items():
        build = entry_build(t, side.data)
        case = t.get("case") or (strip_build(nodeid, [build]) if multi else nodeid)
        out[f"{case} @{build}" if with_build else case] = (nodeid, t)
    return out


Change = tuple[str, str | None, str | None]  # case, outcome in A, outcome in B


def diff_results(a: Side, b: Side, with_build: bool) -> dict[str, Any]:
    """The changed / new / missing cases of B against A, regressions and fixes."""
    ka, kb = _keyed(a, with_build), _keyed(b, with_build)
    changed: list[Change] = []
    new: list[Change] = []
    missing: list[Change] = []
    unchanged = 0
    for key in sorted(set(ka) | set(kb)):
        if key not in kb:
            missing.append((key, ka[key][1]["outcome"], None))
        elif key not in ka:
            new.append((key, None, kb[key][1]["outcome"]))
        elif ka[key][1]["outcome"] != kb[key][1]["outcome"]:
            changed.append((key, ka[key][1]["outcome"], kb[key][1]["outcome"]))
        else:
            unchanged += 1
    regressions = [c for c in changed if c[1] in PASSING and c[2] in FAILING]
    fixed = [c for c in changed if c[1] in FAILING and c[2] in PASSING]
    return {"changed": changed, "new": new, "missing": missing, "unchanged": unchanged,
            "regressions": regressions, "fixed": fixed, "a": ka, "b": kb}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qemublock-diff",
        description="Compare qemublock results files (pytest --qb-results FILE): "
                    "cases are matched by test id without the build's id part. "
                    "Exit status 1 if a case that passed in A fails (or errors) in B.")
    p.add_argument("files", nargs="+", metavar="FILE", help="A.json [B.json]")
    p.add_argument("--builds", nargs=2, metavar=("A", "B"),
                   help="compare build A (of the first file) with build B (of the second "
                        "file, or of the same file when only one is given)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print the failure/skip message of each changed case in B")
    p.add_argument("--json", action="store_true", help="print the differences as JSON")
    return p


def _sides(files: list[str], builds: list[str] | None) -> tuple[Side, Side, bool]:
    """The two sides to compare and whether to match cases build by build."""
    first = load_results(files[0])
    second = load_results(files[1]) if len(files) == 2 else first
    name_a, name_b = files[0], files[-1]
    build_a: str | None
    build_b: str | None
    if builds:
        build_a, build_b = builds
    elif len(files) == 1:
        found = _side("A", first, None).builds
        if len(found) != 2:
            raise DiffError(f"{name_a} has builds {', '.join(found) or 'none'}: "
                            f"say which two to compare with --builds A B")
        build_a, build_b = found
    else:
        build_a = build_b = None
    a = _side(f"A {name_a}", first, build_a)
    b = _side(f"B {name_b}", second, build_b)
    with_build = False
    if build_a is None:
        ma, mb = len(a.builds) > 1, len(b.builds) > 1
        if ma and mb:
            with_build = True  # same builds, two runs: compare build by build
        elif ma or mb:
            raise DiffError(f"A has builds {', '.join(a.builds)}, B has {', '.join(b.builds)}: "
                            f"pick one of each with --builds A B")
    return a, b, with_build


def _print(a: Side, b: Side, d: dict[str, Any], as_json: bool, verbose: bool) -> None:
    if as_json:
        print(json.dumps({
            "a": a.label, "b": b.label, "unchanged": d["unchanged"],
            **{k: [{"case": c, "a": x, "b": y} for c, x, y in d[k]]
               for k in ("changed", "regressions", "fixed", "new", "missing")},
        }, indent=1))
        return
    print(a.describe())
    print(b.describe())
    print(f"changed: {len(d['changed'])} (regressions: {len(d['regressions'])}, "
          f"fixed: {len(d['fixed'])}), new: {len(d['new'])}, missing: {len(d['missing'])}, "
          f"unchanged: {d['unchanged']}")

    def show(title: str, rows: list[Change]) -> None:
        if not rows:
            return
        print(f"{title}:")
        for key, x, y in rows:
            print(f"{key}: {x or '(absent)'} -> {y or '(absent)'}")
            if verbose and key in d["b"]:
                msg = d["b"][key][1].get("message")
                if msg:
                    print(f"    {msg}")

    shown = {c[0] for c in d["regressions"] + d["fixed"]}
    show("regressions (passed in A, fail in B)", d["regressions"])
    show("fixed (failed in A, pass in B)", d["fixed"])
    show("other changes", [c for c in d["changed"] if c[0] not in shown])
    show("new in B", d["new"])
    show("missing from B", d["missing"])


def diff_main(argv: Sequence[str] | None = None) -> int:
    """``qemublock-diff``: what changed between two results files or two builds."""
    p = _parser()
    args = p.parse_args(argv)
    if len(args.files) > 2:
        p.error("give one or two results files")
    try:
        a, b, with_build = _sides(args.files, args.builds)
    except ResultsError as e:
        print(f"qemublock-diff: error: {e}", file=sys.stderr)
        return 2
    d = diff_results(a, b, with_build)
    status = 1 if d["regressions"] else 0
    try:
        _print(a, b, d, args.json, args.verbose)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except BrokenPipeError:
        # The reader stopped early (`qemublock-diff ... | head -1`): that is no
        # error. Point stdout at /dev/null so the flush at exit does not fail
        # again, and still say whether there were regressions.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(diff_main())
