"""``qemublock-diff`` on hand-made results files (no pytest run, no QEMU)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_qemublock.reporting.diff import diff_main

#: the console script, installed next to this interpreter by `pip install -e .`
DIFF = str(Path(sys.executable).with_name("qemublock-diff"))


def _results(tests: dict[str, tuple[str, str]], builds: list[str]) -> dict:
    """A results file: nodeid -> (outcome, build)."""
    return {"format": "qemublock-results", "version": 1, "build_order": builds, "builds": {},
            "tests": {n: {"outcome": o, "build": b} for n, (o, b) in tests.items()}}


def _write(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_diff_two_files_reports_changes_and_exits_1_on_regression(tmp_path, capsys):
    a = _write(tmp_path / "a.json", _results({
        "s.py::t[file-ro]": ("passed", "b72"), "s.py::t[file-rw]": ("passed", "b72"),
        "s.py::t[nbd]": ("failed", "b72"), "s.py::t[gone]": ("passed", "b72"),
        "s.py::t[same]": ("skipped", "b72")}, ["b72"]))
    b = _write(tmp_path / "b.json", _results({
        "s.py::t[file-ro]": ("failed", "b10"), "s.py::t[file-rw]": ("skipped", "b10"),
        "s.py::t[nbd]": ("passed", "b10"), "s.py::t[new]": ("error", "b10"),
        "s.py::t[same]": ("skipped", "b10")}, ["b10"]))
    assert diff_main([a, b]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "changed: 3 (regressions: 1, fixed: 1), new: 1, missing: 1, unchanged: 1" in out
    assert "s.py::t[file-ro]: passed -> failed" in out
    assert out.index("s.py::t[file-ro]: passed -> failed") < out.index("s.py::t[nbd]: failed -> passed")
    assert "s.py::t[file-rw]: passed -> skipped" in out
    assert "s.py::t[new]: (absent) -> error" in out
    assert "s.py::t[gone]: passed -> (absent)" in out
    # the other way round, nbd regressed; a file against itself has no change
    assert diff_main([b, a]) == 1
    assert "s.py::t[nbd]: passed -> failed" in capsys.readouterr().out
    assert diff_main([a, a]) == 0
    assert "changed: 0 (regressions: 0, fixed: 0), new: 0, missing: 0, unchanged: 5" in \
        capsys.readouterr().out


def _diff(*args: str) -> subprocess.CompletedProcess[str]:
    if not Path(DIFF).is_file():
        pytest.skip(f"{DIFF} not installed (pip install -e .)")
    return subprocess.run([DIFF, *args], capture_output=True, text=True, timeout=60, check=False)


def test_diff_console_script_and_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = _diff(str(bad), str(bad))
    assert r.returncode == 2 and "not a qemublock results file" in r.stderr
    three = _write(tmp_path / "three.json", _results(
        {"t[a-x]": ("passed", "a"), "t[b-x]": ("passed", "b"), "t[c-x]": ("passed", "c")}, ["a", "b", "c"]))
    r = _diff(three)
    assert r.returncode == 2 and "--builds" in r.stderr
    r = _diff(three, "--builds", "a", "zz")
    assert r.returncode == 2 and "no cases of build 'zz'" in r.stderr
    r = _diff(three, "--builds", "a", "c", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["unchanged"] == 1


def test_diff_into_a_closed_pipe_exits_quietly(tmp_path):
    """``qemublock-diff A B | head -1``: no BrokenPipeError traceback, the usual status."""
    if not Path(DIFF).is_file():
        pytest.skip(f"{DIFF} not installed (pip install -e .)")
    # far more than a pipe buffer (64 KiB), so the writer is still writing when head exits
    n = 5000
    a = _write(tmp_path / "a.json", _results({f"s.py::t[{i:05d}-x]": ("passed", "b")
                                              for i in range(n)}, ["b"]))
    b = _write(tmp_path / "b.json", _results({f"s.py::t[{i:05d}-x]": ("failed", "b")
                                              for i in range(n)}, ["b"]))
    r = subprocess.run(["bash", "-c", 'set -o pipefail; "$@" | head -1', "bash", DIFF, a, b],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.stdout.startswith("A ") and r.stdout.count("\n") == 1
    assert r.stderr == ""
    assert r.returncode == 1  # a regression, as without the pipe
