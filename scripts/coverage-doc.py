#!/usr/bin/env python3
"""Generate docs/coverage.md from docs/coverage.toml (the source of truth).

    python3 scripts/coverage-doc.py           # rewrite docs/coverage.md
    python3 scripts/coverage-doc.py --check   # exit 1 if docs/coverage.md is not what it would write

tests/test_coverage_doc.py imports this file (``load``, ``render``, ``problems``,
``matches``) to keep the doc, the source and the suites' test ids in step.
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "docs" / "coverage.toml"
DOC = ROOT / "docs" / "coverage.md"

STATUSES = ("covered", "partly", "untested", "not-observable")
BUILDS = ("v7.2", "v10.0")

#: theme -> section title, in the order the doc shows them
THEMES = {
    "open": "Opening: auto-read-only, protocol drivers, defaults",
    "dynamic": "Dynamic auto-read-only (file-posix)",
    "reopen": "blockdev-reopen",
    "jobs": "Block jobs",
    "locks": "Image locks and permission conflicts",
    "exports": "Exports (NBD, qsd, qemu-nbd, FUSE)",
    "devices": "Guest devices",
    "inactive": "Inactive nodes and migration",
    "formats": "Image formats",
    "tools": "qemu-img / qemu-io",
    "internal": "No outside effect (refactors, tests, documentation)",
}

FIELDS = {"commit", "subject", "release", "theme", "behaviour", "status", "tests", "why", "missing"}
TEST_FIELDS = {"id", "builds", "guard"}

Entry = dict[str, Any]


def load(path: Path = SOURCE) -> list[Entry]:
    """The entries of *path*, in file order."""
    with open(path, "rb") as f:
        return list(tomllib.load(f)["commit"])


def problems(entries: list[Entry]) -> list[str]:
    """Everything wrong with the source itself (not with the test ids): one line each."""
    out: list[str] = []
    seen: set[str] = set()
    for e in entries:
        h = e.get("commit", "?")
        where = f"{h} ({e.get('subject', '?')})"
        if not re.fullmatch(r"[0-9a-f]{10}", str(h)):
            out.append(f"{where}: commit must be 10 lower-case hex digits")
        if h in seen:
            out.append(f"{where}: listed twice")
        seen.add(h)
        unknown = set(e) - FIELDS
        if unknown:
            out.append(f"{where}: unknown fields {sorted(unknown)}")
        for key in ("subject", "release", "theme", "behaviour", "status"):
            if not str(e.get(key, "")).strip():
                out.append(f"{where}: no {key}")
        status = e.get("status")
        if status not in STATUSES:
            out.append(f"{where}: status {status!r} is not one of {', '.join(STATUSES)}")
        if e.get("theme") not in THEMES:
            out.append(f"{where}: theme {e.get('theme')!r} is not one of {', '.join(THEMES)}")
        tests = e.get("tests", [])
        if status in ("covered", "partly") and not tests:
            out.append(f"{where}: status {status} but no tests listed")
        if status in ("untested", "not-observable") and tests:
            out.append(f"{where}: status {status} but tests listed (covered or partly?)")
        if status in ("untested", "not-observable") and not str(e.get("why", "")).strip():
            out.append(f"{where}: status {status} needs a why")
        if status == "partly" and not str(e.get("missing", "")).strip():
            out.append(f"{where}: status partly needs a missing (what the tests do not assert)")
        for t in tests:
            if set(t) - TEST_FIELDS or not t.get("id") or not t.get("builds"):
                out.append(f"{where}: test {t} needs id and builds (and optionally guard), nothing else")
            elif set(t["builds"]) - set(BUILDS):
                unknown_builds = sorted(set(t["builds"]) - set(BUILDS))
                out.append(f"{where}: test {t['id']}: unknown builds {unknown_builds}")
    return out


def _pattern(glob: str) -> re.Pattern[str]:
    """A test-id glob: ``*`` is the only wildcard (brackets are literal, as in pytest ids)."""
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")))


def split_build(nodeid: str) -> tuple[str | None, str]:
    """``x.py::t[v7.2-a-b]`` -> ("v7.2", ``x.py::t[a-b]``); ``x.py::t[v7.2]`` -> ("v7.2", ``x.py::t``)."""
    m = re.fullmatch(r"(.*?)\[(v[0-9][^-\]]*)(?:-(.*))?\]", nodeid)
    if m is None or m.group(2) not in BUILDS:
        return None, nodeid
    return m.group(2), m.group(1) + (f"[{m.group(3)}]" if m.group(3) else "")


def matches(glob: str, build: str, nodeids: list[str]) -> list[str]:
    """The collected *nodeids* of *build* whose id without the build matches *glob*."""
    rx = _pattern(glob)
    out = []
    for n in nodeids:
        b, bare = split_build(n)
        if b == build and rx.fullmatch(bare):
            out.append(n)
    return out


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _tests_cell(e: Entry) -> str:
    parts = []
    for t in e.get("tests", []):
        extra = ", ".join(t["builds"]) + (f"; {t['guard']}" if t.get("guard") else "")
        parts.append(f"`{t['id']}` ({extra})")
    if e.get("missing"):
        parts.append(f"*missing:* {e['missing']}")
    if e.get("why"):
        parts.append(f"*why:* {e['why']}")
    return _cell("<br>".join(parts))


def render(entries: list[Entry]) -> str:
    """docs/coverage.md for *entries*."""
    counts = Counter(e["status"] for e in entries)
    by_theme = {th: [e for e in entries if e["theme"] == th] for th in THEMES}
    lines = [
        "# Coverage: QEMU's read-only commits and the tests that assert them",
        "",
        "<!-- Generated by scripts/coverage-doc.py from docs/coverage.toml: edit that file, "
        "not this one. -->",
        "",
        "Every commit of QEMU since 3.1 that changed how the block layer handles read-only and",
        "auto-read-only nodes (upstream master up to ece408818d, 2026-02-13), what it changed as",
        "seen from outside QEMU, and which tests of `suites/` fail if a build under test regressed it.",
        "`tests/test_coverage_doc.py` keeps this page, its source and the suites' test ids in step.",
        "",
        "| status | commits |",
        "|---|---|",
    ]
    planned = sum(1 for e in entries
                  if e["status"] == "untested" and str(e.get("why", "")).startswith("planned:"))
    for s in STATUSES:
        lines.append(f"| {s} | {counts.get(s, 0)} |")
        if s == "untested":
            lines.append(f"| &nbsp;&nbsp;of which a suite is planned (*why: planned: ...*) | {planned} |")
    lines += [f"| **all** | {len(entries)} |", "", "| theme | " + " | ".join(STATUSES) + " |",
              "|---|" + "---|" * len(STATUSES)]
    for th, title in THEMES.items():
        c = Counter(e["status"] for e in by_theme[th])
        cells = " | ".join(str(c.get(s, 0)) for s in STATUSES)
        lines.append(f"| [{title}](#{_anchor(title)}) | {cells} |")
    lines += ["", *HOW.strip("\n").splitlines(), ""]
    for th, title in THEMES.items():
        rows = by_theme[th]
        if not rows:
            continue
        lines += [f"## {title}", "", "| commit | subject | release | behaviour | tests | status |",
                  "|---|---|---|---|---|---|"]
        for e in rows:
            lines.append(f"| {e['commit']} | {_cell(e['subject'])} | {e['release']} "
                         f"| {_cell(e['behaviour'])} | {_tests_cell(e)} | {e['status']} |")
        lines.append("")
    return "\n".join(lines)


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


HOW = """
## How to read and update this

* **commit** is the first 10 hex digits of the upstream commit, **release** the first QEMU release
  that contains it (the mirror has no tags: `git merge-base --is-ancestor <commit> <release commit>`).
* **behaviour** is what the commit changed as seen from outside QEMU (QMP answers, error texts,
  `ro` flags, fd modes, locks, files), on the builds the suites run (Debian 7.2.22 and 10.0.2).
* **status**: `covered`: at least one listed test fails if a build regressed the behaviour;
  `partly`: the tests assert part of it, *missing* says what they do not; `untested`: observable on
  these builds but no test asserts it, *why* says why (`planned: ...` means a suite for it is being
  written); `not-observable`: nothing to see from outside on these builds (refactors, test-only,
  documentation-only, 10.1+ only, build options Debian does not use).
* **tests** are pytest node ids without the build (the id `test_open[v7.2-file-rw-...]` is listed as
  `test_open[file-rw-...]`); `*` matches anything, brackets are literal. After each id: the builds it
  runs on and the capability guard that would skip it on a build without the capability (so a
  guarded test does not catch the removal of its own capability).
  Known QEMU bugs (`docs/known-bugs.md`) are asserted too: those tests expect the bug's exact
  deviation and fail once it is fixed.
* The list was made by searching the upstream history after v3.0 (`git log -S/-G/--grep` for
  read-only, auto-read-only, reopen, permissions, locking and inactive nodes in the block layer,
  exports, devices and tools; the mirror github.com/pbo-linaro/qemu-ci has the history but no
  tags) and reading each hit. A commit that changes this behaviour later belongs here too.
* To update: edit `docs/coverage.toml`, run `python3 scripts/coverage-doc.py`, commit both.
  `tests/test_coverage_doc.py` fails if this page is stale, if a listed test id no longer exists in
  `pytest suites --collect-only` on a listed build, or if an entry lacks its tests or its why.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if docs/coverage.md is stale")
    args = ap.parse_args(argv)
    entries = load()
    bad = problems(entries)
    if bad:
        print("\n".join(f"{SOURCE.name}: {p}" for p in bad), file=sys.stderr)
        return 1
    text = render(entries)
    if args.check:
        if DOC.read_text() != text:
            print(f"{DOC} is stale: run python3 scripts/coverage-doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
