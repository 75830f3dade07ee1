"""Rendering the end-of-run matrix (no pytest run, no QEMU)."""
from __future__ import annotations

import pytest

from pytest_qemublock.reporting import summary
from pytest_qemublock.reporting.fold import OUTCOMES
from pytest_qemublock.reporting.summary import (
    build_differences,
    render_matrix,
    render_text,
)


def _cells(n_backends: int, builds: tuple[str, ...] = ("b1",)) -> dict:
    return {(b, s, f"backend-number-{k}"): {"passed": 120, "failed": 3, "skipped": 11}
            for b in builds for s in ("open", "reopen") for k in range(n_backends)}


@pytest.mark.parametrize("width", [60, 80, 100, 132])
@pytest.mark.parametrize("n", [1, 5, 30])
def test_render_never_exceeds_the_width(width, n):
    _, lines = render_matrix(_cells(n, ("b72", "b10")), ["b72", "b10"], {}, width=width)
    text = render_text(lines)
    assert all(len(line) <= width for line in text.splitlines()), text
    # every cell is somewhere, once per build and row
    assert text.count("120✓ 3F 11s") == 2 * 2 * n


def test_render_splits_columns_it_cannot_transpose():
    cells = {("b", f"scenario-{s}", f"backend-{k}"): {"passed": 1} for s in range(30) for k in range(30)}
    _, lines = render_matrix(cells, ["b"], {}, width=80)
    text = render_text(lines)
    assert "backends 1/" in text or "scenarios 1/" in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_render_ascii_fallback():
    title, lines = render_matrix({("b", "open", "file"): {"passed": 2, "skipped": 1}}, ["b"],
                                 {"b": {"version": "7.2.22"}}, unicode=False)
    text = render_text(lines)
    assert text.isascii() and "2p 1s" in text and "build: b = QEMU 7.2.22" in text
    assert title == "qemublock matrix: scenario x backend"


def test_symbols_are_one_per_outcome():
    assert set(summary._SYMBOLS) == set(OUTCOMES)
    assert len(set(summary._SYMBOLS.values())) == len(OUTCOMES)


def test_build_differences_lists_failures_first():
    outcomes = {"t[a]": {"b1": "skipped", "b2": "passed"}, "t[b]": {"b1": "passed", "b2": "failed"},
                "t[c]": {"b1": "passed", "b2": "passed"}}
    lines = build_differences(outcomes, ["b1", "b2"], "r.json")
    assert lines[0] == "outcome differs between builds for 2 case(s):"
    assert lines[1:3] == ["  t[b]: b1 passed, b2 failed", "  t[a]: b1 skipped, b2 passed"]
    assert lines[3] == "  (all of them: qemublock-diff r.json --builds b1 b2)"
    assert build_differences({"t[c]": outcomes["t[c]"]}, ["b1", "b2"], None) == [
        "same outcome on all 2 builds for every case"]


def _suite_like(builds: tuple[str, ...]) -> dict:
    """The suites' shape: 20 backends, 6 scenarios over many of them, smoke without a backend."""
    backends = [f"nbd-qemu-export-unix-{i:02d}" for i in range(20)]
    cells = {(b, s, k): {"passed": 1440 if s == "open" else 17, "xfailed": 2 if s == "jobs" else 0}
             for b in builds for s in ("defaults", "degrade", "dynamic", "jobs", "open", "reopen")
             for k in backends}
    cells.update({(b, "reopen", "-"): {"passed": 2, "xfailed": 1} for b in builds})
    cells.update({(b, "smoke", "-"): {"passed": 2} for b in builds})
    return cells


@pytest.mark.parametrize("builds", [("v7.2",), ("v7.2", "v10.0")])
def test_80_columns_one_table_and_a_line_for_a_column_of_one_row(builds):
    title, lines = render_matrix(_suite_like(builds), list(builds), {}, width=80)
    text = render_text(lines)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert title.startswith("qemublock matrix: backend × scenario")
    assert "scenarios 1/" not in text  # one table
    header = next(line for line in text.splitlines() if line.startswith("backend "))
    assert "smoke" not in header and header.split()[-1] == "reopen"
    want = "smoke: only backend -: " + ("v7.2 2✓, v10.0 2✓" if len(builds) > 1 else "2✓")
    assert text.splitlines()[-1] == want


#: the suites' shape today (docs/coverage.toml): scenario -> the backends it runs on
SUITES = {
    "defaults": ["file-eacces", "file-erofs", "file-rw"],
    "degrade": ["file-eacces", "file-erofs", "http-ro", "iscsi-ro", "nbd-nbdkit-unix-ro",
                "nbd-qemu-export-unix-ro", "nbd-qemu-nbd-tcp-ro", "nbd-qemu-nbd-unix-ro", "nbd-qsd-tcp-ro",
                "nbd-qsd-unix-ro", "ssh-ro"],
    "dynamic": ["file-eacces", "file-erofs", "file-rw"],
    "fallback": ["file-rw", "vvfat-dir"],
    "hostdev": ["hostdev-ro"],
    "inactive": ["file-rw"],
    "jobs": ["file-eacces", "file-erofs", "file-rw"],
    "open": [f"{k}-{s}" for k in ("http", "iscsi", "nbd-nbdkit-unix", "nbd-qemu-export-unix",
                                  "nbd-qemu-nbd-tcp", "nbd-qemu-nbd-unix", "nbd-qsd-tcp",
                                  "nbd-qsd-unix", "ssh")
             for s in ("ro", "rw") if (k, s) != ("http", "rw")]
            + ["file-eacces", "file-erofs", "file-rw"],
    "reopen": ["-", "file-eacces", "file-erofs", "file-rw", "nbd-qemu-nbd-unix-ro", "nbd-qemu-nbd-unix-rw"],
    "smoke": ["-"],
    "snapshot": ["file-eacces", "file-erofs", "file-rw"],
}


@pytest.mark.parametrize("builds", [("v7.2",), ("v7.2", "v10.0")])
def test_80_columns_whole_suites_one_table_and_lines_for_sparse_columns(builds):
    counts = {"open": {"passed": 72, "xfailed": 1}, "dynamic": {"passed": 29, "xfailed": 2}}
    cells = {(b, s, k): counts.get(s, {"passed": 16}) for b in builds for s, ks in SUITES.items() for k in ks}
    cells[(builds[0], "open", "(all)-wide")] = {"passed": 1440, "xfailed": 4}  # the widest total cell
    _, lines = render_matrix(cells, list(builds), {}, width=80)
    text = render_text(lines)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "scenarios 1/" not in text, text  # one table, no near-empty second one
    header = next(line for line in text.splitlines() if line.startswith("backend "))
    under = [line for line in text.splitlines() if ": only backend" in line]
    assert {line.split(":")[0] for line in under} >= {"hostdev", "inactive", "smoke", "fallback"}
    assert "fallback: only backends file-rw: " in text
    assert {"degrade", "dynamic", "jobs", "open", "reopen"} <= set(header.split()), header
