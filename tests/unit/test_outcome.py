"""The outcome rules without QEMU: the full-match error rule, the start-up message,
and the three ways a step that carries a known bug can end (plus the abort)."""
from __future__ import annotations

import pytest
from helpers_unit import caps

from pytest_qemublock.scenario import known_bugs
from pytest_qemublock.scenario.outcome import (
    IMAGE,
    O_RDONLY,
    O_RDWR,
    CaseCheck,
    Expect,
    Outcome,
    check,
    mismatches,
    startup_message,
    tool_message,
)


def test_error_must_match_the_whole_message() -> None:
    exp = Expect(False, error=r"Block node is read-only")
    assert mismatches(exp, Outcome(False, "Block node is read-only")) == []
    assert mismatches(exp, Outcome(False, "Block node is read-only (node n0)")) == ["error message differs"]
    assert mismatches(exp, Outcome(False, "Node: Block node is read-only")) == ["error message differs"]


def test_state_is_checked_after_a_refused_step_too() -> None:
    exp = Expect(False, error="no", ro={"n0": False}, fds={IMAGE: O_RDONLY})
    got = Outcome(False, "no", ro={"n0": None}, fds={IMAGE: [O_RDWR]})
    assert mismatches(exp, got) == ["node n0 missing (nodes: [])",
                                    "image fd modes ['O_RDWR'], expected one O_RDONLY fd"]
    # exactly one fd: a second one (e.g. a leaked O_RDWR) is a deviation too
    two = Outcome(False, "no", ro={"n0": False}, fds={IMAGE: [O_RDONLY, O_RDWR]})
    assert mismatches(exp, two) == ["image fd modes ['O_RDONLY', 'O_RDWR'], expected one O_RDONLY fd"]


def test_check_message_names_build_context_expectation_and_qemu() -> None:
    with pytest.raises(AssertionError) as e:
        check(Expect(True, ro={"n0": True}, because="read-only=on"), Outcome(True, ro={"n0": False}),
              what="open x", build="v7.2", context="file-rw")
    assert str(e.value) == ("open x [build v7.2; file-rw]: n0.ro=False, expected True\n"
                            "  expected: succeeds, then n0.ro=True\n"
                            "  because:  read-only=on\n"
                            "  QEMU did: succeeded, then n0.ro=False")


def test_startup_message_strips_exactly_our_option_and_argument() -> None:
    argv = ["setpriv", "--reuid=65534", "/usr/bin/qemu-system-x86_64", "-M", "none",
            "-blockdev", '{"driver":"file","filename":"/a,b"}']
    stderr = ("qemu-system-x86_64: warning: something else\n"
              'qemu-system-x86_64: -blockdev {"driver":"file","filename":"/a,b"}: '
              "Could not open '/a,b': Read-only file system\n")
    assert startup_message(stderr, argv) == "Could not open '/a,b': Read-only file system"
    # a line for another option is not ours: everything is kept, so a pattern cannot match by chance
    other = 'qemu-system-x86_64: -drive if=none: Could not open\n'
    assert startup_message(other, argv) == other.strip()


def test_tool_message_drops_the_program_name_of_each_line() -> None:
    out = "qemu-io: Could not open '/p': Permission denied\nqemu-io: Block node is read-only\n"
    assert tool_message(out, "qemu-io") == "Could not open '/p': Permission denied\nBlock node is read-only"


# -- known bugs: one path for every scenario --------------------------------------------

BUG = known_bugs.KnownBug("b1", "the fd stays O_RDWR", "file-posix.c f() (abc123)", "dyn", r"^case-a$",
                          known_bugs.Deviation(fds={IMAGE: O_RDWR}))
FIXED_EXP = Expect(True, ro={"n0": False}, fds={IMAGE: O_RDONLY}, because="no writer left", bug=BUG)


def _check(case: str = "case-a", version: tuple[int, int] = (10, 0)) -> CaseCheck:
    return CaseCheck("dyn", case, build="v10.0", caps=caps(version))


def test_bug_as_predicted_is_followed_and_ends_as_xfail() -> None:
    cc = _check()
    assert cc.step(FIXED_EXP, Outcome(True, ro={"n0": False}, fds={IMAGE: [O_RDWR]}), what="step 3") is True
    assert cc.step(Expect(True, fds={IMAGE: O_RDWR}), Outcome(True, fds={IMAGE: [O_RDWR]}),
                   what="step 4") is False
    with pytest.raises(pytest.xfail.Exception, match=r"^b1: the fd stays O_RDWR$"):
        cc.finish()


def test_fixed_behaviour_goes_on_and_fails_like_a_strict_xpass() -> None:
    cc = _check()
    assert cc.step(FIXED_EXP, Outcome(True, ro={"n0": False}, fds={IMAGE: [O_RDONLY]}),
                   what="step 3") is False
    with pytest.raises(AssertionError, match=r"known bug b1 not reproduced on build v10\.0 .*fixed\? "
                                             r"update scenario/known_bugs\.py"):
        cc.finish()


def test_anything_else_fails_at_once_naming_expectation_and_prediction() -> None:
    cc = _check()
    with pytest.raises(AssertionError) as e:
        # the predicted fd, but also a wrong ro: neither the expectation nor the bug
        cc.step(FIXED_EXP, Outcome(True, ro={"n0": True}, fds={IMAGE: [O_RDWR]}), what="step 3")
    text = str(e.value)
    assert "expected: succeeds, then n0.ro=False, image fd O_RDONLY" in text
    assert "known QEMU bug b1 predicts instead: image fd O_RDWR, everything else as expected" in text


def test_bug_outside_its_cases_or_builds_is_a_plain_failure() -> None:
    got = Outcome(True, ro={"n0": False}, fds={IMAGE: [O_RDWR]})
    with pytest.raises(AssertionError, match="does not apply to this case or build"):
        _check(case="case-b").step(FIXED_EXP, got, what="step 3")
    fixed = known_bugs.KnownBug("b2", "t", "c", "dyn", r"^case-a$", BUG.deviation,
                                fixed_in=((9, 1), "7d99ae59a2"))
    assert fixed.affects(caps((9, 0))) and not fixed.affects(caps((9, 1)))
    with pytest.raises(AssertionError, match="does not apply to this case or build"):
        _check(version=(10, 0)).step(FIXED_EXP.replace(bug=fixed), got, what="step 3")


def test_known_abort_is_sigabrt_with_the_assertion_text() -> None:
    exp = Expect(None, because="QEMU must answer", bug=known_bugs.EMPTY_REOPEN_ABORTS)
    died = "qemu-system-x86_64: ../block.c:4379: bdrv_reopen_multiple: Assertion `bs_queue != NULL' failed.\n"
    cc = CaseCheck("reopen", "empty_options_list", build="v7.2", caps=caps((7, 2)))
    assert cc.step(exp, Outcome(False, died="killed by SIGABRT", stderr=died), what="reopen []") is True
    for other in (Outcome(False, died="killed by SIGSEGV", stderr=died),
                  Outcome(False, died="killed by SIGABRT", stderr="Assertion `x' failed")):
        with pytest.raises(AssertionError, match="QEMU died"):
            CaseCheck("reopen", "empty_options_list", build="v7.2", caps=caps((7, 2))).step(
                exp, other, what="r")
    # answering (success or error) is the fixed behaviour
    cc = CaseCheck("reopen", "empty_options_list", build="v7.2", caps=caps((7, 2)))
    assert cc.step(exp, Outcome(False, "some error", "GenericError"), what="reopen []") is False
    with pytest.raises(AssertionError, match="not reproduced"):
        cc.finish()
