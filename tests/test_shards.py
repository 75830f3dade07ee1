"""Sharding a run across CI runners, for real: the CI templates' own command lines run a
subset of the suites as 3 shards (``--qb-shard K/3``), merge them (``qemublock-merge``) and
print the matrix (``qemublock-summary``); the result must be the single run's.

The subset spans 8 suite modules on two backends (file-rw, and qemu-nbd over a unix
socket, whose server the open cases share per module), ~210 cases on Debian's QEMU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import BASE_ARGS, assert_no_leak

ROOT = Path(__file__).resolve().parent.parent
GITLAB = ROOT / "ci" / "gitlab" / "qemublock.gitlab-ci.yml"
GITHUB = ROOT / "ci" / "github" / "qemublock.yml"
BIN = Path(sys.executable).parent
SUBSET = ["--backend", "file-rw,nbd-qemu-nbd-unix", "--format", "raw,proto", *BASE_ARGS]
SHARDS = 3


def _gitlab() -> dict[str, Any]:
    return yaml.safe_load(GITLAB.read_text())


def _github() -> dict[str, Any]:
    return yaml.safe_load(GITHUB.read_text())


def _step(job: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in job["steps"] if s.get("name") == name)


def test_templates_are_valid_yaml_and_run_the_same_commands() -> None:
    gitlab = _gitlab()
    shard, report = gitlab["qemublock-shard"], gitlab["qemublock-report"]
    assert isinstance(shard["parallel"], int) and shard["parallel"] >= 2
    assert any("--qb-shard \"$CI_NODE_INDEX/$CI_NODE_TOTAL\"" in line for line in shard["script"])
    assert shard["artifacts"]["when"] == "always"  # a failing shard still hands its results on
    assert report["needs"] == ["qemublock-shard"] and report["when"] == "always"
    assert report["artifacts"]["reports"]["junit"] == "qemublock/junit.xml"
    assert {"qemublock/results.json", "qemublock/junit.xml"} <= set(report["artifacts"]["paths"])
    github = _github()
    jobs = github["jobs"]
    # GitHub's example runs GitLab's lines: the same variables, CI_NODE_* from the matrix
    assert github["env"] == gitlab["variables"]
    assert jobs["shard"]["env"] == {"CI_NODE_INDEX": "${{ matrix.shard }}",
                                    "CI_NODE_TOTAL": "${{ strategy.job-total }}"}
    assert jobs["shard"]["strategy"]["matrix"]["shard"] == list(range(1, shard["parallel"] + 1))
    assert jobs["shard"]["strategy"]["fail-fast"] is False
    assert _step(jobs["shard"], "shard")["run"].splitlines() == shard["script"]
    assert jobs["report"]["needs"] == "shard" and jobs["report"]["if"] == "always()"
    assert _step(jobs["report"], "merge")["run"].splitlines() == report["script"]


def _run(cmd: list[str] | str, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    """Run *cmd* (a shell line when a string); its output, asserting exit status 0."""
    argv = ["bash", "-ec", cmd] if isinstance(cmd, str) else cmd
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _matrix_block(output: str) -> str:
    """The matrix a run printed: from its title line to the line before 'results written'."""
    lines = output.splitlines()
    start = next(i for i, ln in enumerate(lines) if " qemublock matrix: " in ln)
    end = next(i for i, ln in enumerate(lines) if ln.startswith("qemublock: results written"))
    return "\n".join(lines[start:end]) + "\n"


def _junit_cases(path: Path) -> tuple[set[tuple[str, str]], dict[str, str]]:
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    cases = {(str(c.get("classname")), str(c.get("name"))) for c in suite.iter("testcase")}
    counts = {k: str(suite.get(k)) for k in ("tests", "errors", "failures", "skipped")}
    return cases, counts


def test_three_shards_merge_into_the_single_run(inner) -> None:
    cwd = inner.path
    env = {**os.environ, "COLUMNS": "100",
           "QB_QEMU_BUILD": "/", "QB_BUILD_NAME": "b72", "QB_SUITES": str(ROOT / "suites"),
           "QB_BIN": str(BIN), "QB_DURATIONS": "single.json",
           "QB_PYTEST_ARGS": " ".join([*SUBSET, f"--qb-evidence-dir={cwd / 'evidence'}"])}
    single_out = _run([str(BIN / "pytest"), str(ROOT / "suites"), "-n", "2", "--qemu-build", "b72=/",
                       "--qb-results", "single.json", "--junitxml", "single.xml", *SUBSET,
                       f"--qb-evidence-dir={cwd / 'evidence'}"], cwd, env)
    single = json.loads((cwd / "single.json").read_text())
    assert 150 <= len(single["tests"]) <= 300, len(single["tests"])
    assert len({n.split("::")[0] for n in single["tests"]}) >= 6  # several modules

    # The GitLab template's lines, as a runner of `parallel: 3` runs them (balanced by the
    # single run's measured durations); shard 1 under xdist (its workers cut the collection),
    # the others serially.
    gitlab = _gitlab()
    for k in range(1, SHARDS + 1):
        for line in gitlab["qemublock-shard"]["script"]:
            _run(line, cwd, {**env, "CI_NODE_INDEX": str(k), "CI_NODE_TOTAL": str(SHARDS),
                             "QB_WORKERS": "2" if k == 1 else "0"})
    for line in gitlab["qemublock-report"]["script"]:
        _run(line, cwd, env)
    assert_no_leak(inner)

    shards = [json.loads((cwd / f"qemublock/shard-{k}.json").read_text()) for k in range(1, 4)]
    ids = [set(s["tests"]) for s in shards]
    assert all(ids), [len(i) for i in ids]
    assert sum(len(i) for i in ids) == len(set().union(*ids)), "a case ran in two shards"
    assert set().union(*ids) == set(single["tests"])
    for s in shards:
        assert s["shard"]["balanced_by"] == "durations of single.json"
        assert s["shard"]["cases"] == len(single["tests"])
    # a sharing group (module x build x backend) is never split
    owner: dict[tuple[str, str], int] = {}
    for k, s in enumerate(shards, 1):
        for nodeid, test in s["tests"].items():
            assert owner.setdefault((nodeid.split("::")[0], test["backend"]), k) == k, nodeid

    merged = json.loads((cwd / "qemublock/results.json").read_text())
    assert (merged["format"], merged["version"]) == (single["format"], single["version"])
    assert [s["index"] for s in merged["shards"]] == [1, 2, 3]
    assert merged["totals"] == single["totals"]
    assert merged["matrix"] == single["matrix"]
    assert merged["builds"] == single["builds"]
    assert merged["build_order"] == single["build_order"] == ["b72"]
    for nodeid, test in single["tests"].items():
        assert set(merged["tests"][nodeid]) == set(test), nodeid
        assert merged["tests"][nodeid]["outcome"] == test["outcome"], nodeid

    diff = subprocess.run([str(BIN / "qemublock-diff"), "single.json", "qemublock/results.json"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert (f"changed: 0 (regressions: 0, fixed: 0), new: 0, missing: 0, "
            f"unchanged: {len(single['tests'])}") in diff.stdout.splitlines(), diff.stdout

    assert (cwd / "qemublock/summary.txt").read_text() == _matrix_block(single_out)

    cases, counts = _junit_cases(cwd / "qemublock/junit.xml")
    single_cases, single_counts = _junit_cases(cwd / "single.xml")
    assert cases == single_cases and counts == single_counts

    # deterministic: shard 2 collected again (serially, not by xdist workers) is the same cut
    for _ in range(2):
        out = _run([str(BIN / "pytest"), str(ROOT / "suites"), "--qemu-build", "b72=/",
                    "--qb-shard", "2/3", "--qb-shard-durations", "single.json",
                    "--collect-only", "-q", *SUBSET], cwd, env)
        collected = {ln for ln in out.splitlines() if "::" in ln}
        assert collected == ids[1]


def test_merge_refuses_an_incomplete_run(inner) -> None:
    """A missing shard or the same shard twice: one line, exit 2, nothing written."""
    inner.pytester.makepyfile(test_a="def test_a():\n    pass\n", test_b="def test_b():\n    pass\n")
    for k in (1, 2):
        inner.run("--qb-shard", f"{k}/2", f"--qb-results=s{k}.json").assert_outcomes(passed=1)
    merge = str(BIN / "qemublock-merge")
    for args, error in ((["s1.json"], "shard 2/2 missing (given: s1.json)"),
                        (["s1.json", "s1.json"], "s1.json and s1.json are both shard 1/2")):
        proc = subprocess.run([merge, "out.json", *args], cwd=inner.path, capture_output=True,
                              text=True, timeout=60, check=False)
        assert (proc.returncode, proc.stderr) == (2, f"qemublock-merge: error: {error}\n")
        assert not (inner.path / "out.json").exists()
    proc = subprocess.run([merge, "out.json", "s2.json", "s1.json"], cwd=inner.path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads((inner.path / "out.json").read_text())["tests"]) == \
        ["test_a.py::test_a", "test_b.py::test_b"]


@pytest.mark.parametrize(("spec", "error"), [
    ("0/3", "--qb-shard 0/3: K must be between 1 and N (N >= 1)"),
    ("4/3", "--qb-shard 4/3: K must be between 1 and N (N >= 1)"),
    ("1/0", "--qb-shard 1/0: K must be between 1 and N (N >= 1)"),
    ("2", "--qb-shard 2: expected K/N, e.g. 2/3 (shard 2 of 3)"),
])
def test_bad_shard_spec_is_one_line_exit_4(inner, spec: str, error: str) -> None:
    inner.pytester.makepyfile(test_a="def test_a():\n    pass\n")
    r = inner.run(f"--qb-shard={spec}")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert [ln for ln in r.stderr.lines if ln] == [f"ERROR: qemublock: {error}"]


def test_bad_durations_file_is_one_line_exit_4(inner) -> None:
    inner.pytester.makepyfile(test_a="def test_a():\n    pass\n")
    (inner.path / "d.json").write_text('{"format": "something else"}')
    r = inner.run("--qb-shard=1/2", "--qb-shard-durations=d.json")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert [ln for ln in r.stderr.lines if ln] == [
        f"ERROR: qemublock: --qb-shard-durations: {inner.path / 'd.json'} is neither a durations "
        f"file (qemublock-durations) nor a results file (--qb-results)"]


def test_more_shards_than_groups_leaves_a_shard_empty_but_not_an_empty_selection(inner) -> None:
    """One module = one sharing group: shard 2/2 has nothing to run, which is no error; a
    selection that leaves nothing to cut stays pytest's 'no tests ran' (exit 5)."""
    inner.pytester.makepyfile(test_a="def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    r = inner.run("--qb-shard=2/2", "--qb-results=s2.json")
    assert r.ret == pytest.ExitCode.OK
    r.stdout.fnmatch_lines(["qemublock: shard 2/2: 0 of 2 cases, balanced by case count; nothing to "
                            "run: 1 sharing groups (module x build x backend) for 2 shards"])
    data = json.loads((inner.path / "s2.json").read_text())
    assert (data["exitstatus"], data["tests"], data["shard"]["selected"]) == (0, {}, 0)
    r = inner.run("--qb-shard=1/2", "--qb-results=s1.json")
    r.assert_outcomes(passed=2)
    r = inner.run("--qb-shard=1/2", "-k", "nothing_matches")
    assert r.ret == pytest.ExitCode.NO_TESTS_COLLECTED
