"""Folding a case's phase reports into one outcome, and test ids without the build."""
from __future__ import annotations

import pytest

from pytest_qemublock.reporting.fold import (
    CaseResult,
    case_build,
    matrix_cells,
    strip_build,
)


def _rep(when: str, outcome: str, *, wasxfail: str | None = None, longrepr: object = None,
         props: tuple = (), procs: dict | None = None) -> pytest.TestReport:
    rep = pytest.TestReport("t.py::t[b72-x]", ("t.py", 1, "t"), {}, outcome, longrepr, when,
                            user_properties=list(props), duration=0.5)
    if wasxfail is not None:
        rep.wasxfail = wasxfail
    if procs:
        rep.qb_procs = procs
    return rep


def _fold(*reps: pytest.TestReport) -> CaseResult:
    case = CaseResult("t.py::t[b72-x]")
    for rep in reps:
        case.add(rep)
    return case


@pytest.mark.parametrize(("phases", "want"), [
    ([("setup", "passed"), ("call", "passed"), ("teardown", "passed")], "passed"),
    ([("setup", "passed"), ("call", "failed"), ("teardown", "failed")], "failed"),
    ([("setup", "passed"), ("call", "passed"), ("teardown", "failed")], "error"),
    ([("setup", "failed"), ("teardown", "passed")], "error"),
    ([("setup", "skipped"), ("teardown", "passed")], "skipped"),
    ([("setup", "passed"), ("call", "skipped"), ("teardown", "passed")], "skipped"),
])
def test_one_outcome_per_case(phases, want):
    case = _fold(*(_rep(w, o, longrepr=("t.py", 1, "Skipped: why") if o == "skipped" else
                        None if o == "passed" else "E   assert 0") for w, o in phases))
    assert case.outcome == want
    assert case.duration == 0.5 * len(phases)


def test_xfail_keeps_its_reason_and_procs_add_up():
    case = _fold(_rep("setup", "passed", props=[("qb.scenario", "open")], procs={"qemu-img": 1}),
                 _rep("call", "skipped", wasxfail="known bug", procs={"qemu-system-x86_64": 2}),
                 _rep("teardown", "passed", procs={"sh": 1}))
    assert (case.outcome, case.message) == ("xfailed", "known bug")
    assert case.qemu_procs == 3 and case.to_json()["procs"] == {
        "qemu-img": 1, "qemu-system-x86_64": 2, "sh": 1}
    assert case.axis("scenario") == "open" and case.axis("backend") == "-"


def test_case_build_and_cells():
    case = _fold(_rep("setup", "passed", props=[("qb.scenario", "open")]), _rep("call", "passed"))
    assert case_build(case, ["b72", "b10"], {}) == "b72"  # from the id
    assert case_build(case, [], {"only": {}}) == "only"
    assert matrix_cells([case], lambda c: "b72") == {("b72", "open", "-"): {"passed": 1}}


@pytest.mark.parametrize(("nodeid", "build", "want"), [
    ("s/t.py::test_open[b72-file-rw-raw]", "b72", "s/t.py::test_open[file-rw-raw]"),
    ("s/t.py::test_open[file-rw-b72]", "b72", "s/t.py::test_open[file-rw]"),
    ("s/t.py::test_smoke[b72]", "b72", "s/t.py::test_smoke"),
    ("s/t.py::test_open[qemu-10.0-file-rw]", "qemu-10.0", "s/t.py::test_open[file-rw]"),
    ("s/t.py::test_open[b720-file]", "b72", "s/t.py::test_open[b720-file]"),  # not a whole part
    ("s/t.py::test_plain", "b72", "s/t.py::test_plain"),
])
def test_strip_build(nodeid, build, want):
    assert strip_build(nodeid, [build]) == want


EVIDENCE = {"findings": [{"what": "open x", "expected": "succeeds"}], "processes": [], "qmp": []}


def test_only_failing_and_xfailed_cases_carry_evidence():
    passed = _fold(_rep("setup", "passed"), _rep("call", "passed"), _rep("teardown", "passed"))
    failed = _rep("call", "failed", longrepr="E   AssertionError: open x\nE     expected: succeeds")
    failed.qb_evidence = EVIDENCE
    case = _fold(_rep("setup", "passed"), failed, _rep("teardown", "passed"))
    xfailed = _rep("call", "skipped", wasxfail="known bug")
    xfailed.qb_evidence = EVIDENCE
    xcase = _fold(_rep("setup", "passed"), xfailed, _rep("teardown", "passed"))

    skipped = _fold(_rep("setup", "skipped", longrepr=("t.py", 1, "Skipped: no qsd here")))
    assert not {"details", "evidence"} & set(passed.to_json())
    assert not {"details", "evidence"} & set(skipped.to_json())
    assert case.to_json()["evidence"] == EVIDENCE
    assert case.to_json()["details"] == "E   AssertionError: open x\nE     expected: succeeds"
    assert xcase.to_json()["evidence"] == EVIDENCE
    assert "details" not in xcase.to_json()  # the reason is the message already
