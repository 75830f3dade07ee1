"""The one model of an expected outcome and of what QEMU did, and how they compare.

An :class:`Expect` (from the expectations package) says whether a step
succeeds, the error it fails with (a regex that must match the *whole*
message), the ``ro`` flag per node and the mode of QEMU's one fd per image
label afterwards, and why. An :class:`Outcome` (from
:mod:`pytest_qemublock.scenario.drive` and the step drivers) says what QEMU
did. :func:`check` fails with both side by side; :class:`CaseCheck` does the
same for a case of several steps and handles known bugs
(:mod:`pytest_qemublock.scenario.known_bugs`) in one way for every scenario.

The error message is what QEMU reported, without decoration: a QMP error's
``desc`` (its class is kept apart), or for a start-up error the message
after ``<prog>: <option> <argument>: `` (:func:`startup_message`).
"""
from __future__ import annotations

import dataclasses
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import pytest

from ..qemu import crashes
from ..qemu.capabilities import Capabilities
from .known_bugs import O_RDONLY, O_RDWR, KnownBug

__all__ = [
    "IMAGE",
    "O_RDONLY",
    "O_RDWR",
    "CaseCheck",
    "Expect",
    "Outcome",
    "check",
    "mismatches",
    "predicted",
    "startup_message",
]
#: the image label of a scenario with one image
IMAGE = "image"


@dataclass(frozen=True)
class Expect:
    """The expected outcome of one step and the state it leaves behind.

    The state is checked after refused steps too: a refused step must leave
    the nodes as they were.
    """

    ok: bool | None  # the step succeeds; None: either, as long as QEMU answers
    error: str | None = None  # regex that must match the *whole* error message
    ro: Mapping[str, bool] = field(default_factory=dict)  # node-name -> query-named-block-nodes ro
    fds: Mapping[str, str] = field(default_factory=dict)  # image label -> mode of QEMU's one fd for it
    #: image label -> QEMU's lock ranges on it (/proc/locks, "100-101"), when the scenario reads them
    locks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: second process (e.g. "qemu-io rw") -> its error text, "" if it may open the image; checked
    #: for the probes the step really ran
    others: Mapping[str, str] = field(default_factory=dict)
    because: str = ""
    bug: KnownBug | None = None  # a known QEMU bug makes QEMU deviate here (see CaseCheck)

    def describe(self) -> str:
        if self.ok is None:
            head = "answers (succeeds or fails)"
        else:
            head = "succeeds" if self.ok else f"fails with {shown(self.error)}"
        state = [f"{n}.ro={v}" for n, v in self.ro.items()] + [f"{k} fd {m}" for k, m in self.fds.items()]
        state += [f"{k} locks {' '.join(r) or 'none'}" for k, r in self.locks.items()]
        state += [f"{p} {'refused: ' + repr(t) if t else 'opens it'}" for p, t in self.others.items()]
        return head + (", then " + ", ".join(state) if state else "")

    def replace(self, **changes: Any) -> Expect:
        return dataclasses.replace(self, **changes)


def shown(error: str | None) -> str:
    """An error regex for humans: escaped literal text (re.escape) shown as the text itself."""
    if error is None:
        return "any error"
    plain = re.sub(r"\\(.)", r"\1", error)
    return f"exactly {plain!r}" if re.escape(plain) == error or re.fullmatch(error, plain) else f"/{error}/"


@dataclass
class Outcome:
    """What QEMU did in one step, and the state afterwards."""

    ok: bool
    error: str = ""  # the message (QMP desc, or the start-up message without its prefix)
    error_class: str = ""  # QMP error class, if any
    ro: dict[str, bool | None] = field(default_factory=dict)  # None: node missing
    fds: dict[str, list[str]] = field(default_factory=dict)  # image label -> modes of QEMU's fds
    locks: dict[str, list[str]] = field(default_factory=dict)  # image label -> QEMU's lock ranges
    others: dict[str, str] = field(default_factory=dict)  # second process -> its error ("" opened)
    blk_ro: bool | None = None  # query-block inserted.ro (-drive only)
    detail: str = ""  # extra output worth showing (e.g. qemu-io's)
    died: str = ""  # how QEMU ended if it died meanwhile ("killed by SIGABRT")
    stderr: str = ""  # QEMU's stderr, if it died
    vm: Any = None  # the QemuInstance, for the next steps (None if it did not start)

    def describe(self) -> str:
        if self.died:
            return f"died: {self.died}; stderr: {self.stderr.strip()!r}"
        if self.ok:
            head = "succeeded"
        else:
            head = "failed: " + (f"[{self.error_class}] " if self.error_class else "") + self.error.strip()
        state = ([f"{n}.ro={'missing' if v is None else v}" for n, v in self.ro.items()]
                 + [f"{k} fd {','.join(m) or 'none'}" for k, m in self.fds.items()]
                 + [f"{k} locks {' '.join(r) or 'none'}" for k, r in self.locks.items()]
                 + [f"{p} {'refused: ' + repr(t) if t else 'opened it'}" for p, t in self.others.items()])
        if self.blk_ro is not None:
            state.append(f"query-block ro={self.blk_ro}")
        text = head + (", then " + ", ".join(state) if state else "")
        return text + (f" ({self.detail.strip()})" if self.detail.strip() else "")


def startup_message(stderr: str, argv: Sequence[str]) -> str:
    """The message of a start-up error, as QEMU's error_report() printed it for an option
    (util/qemu-error.c print_loc: ``<prog>: <option> <argument>: <message>``).

    The prefix is the exact option and argument we passed; other stderr lines
    (warnings, hints) are left out. Without such a line: all of stderr.
    """
    progs = {PurePath(a).name for a in argv}
    for line in stderr.splitlines():
        prog, sep, rest = line.partition(": ")
        if not sep or prog not in progs:
            continue
        for opt, arg in zip(argv, argv[1:], strict=False):
            if rest.startswith(f"{opt} {arg}: "):
                return rest[len(opt) + len(arg) + 3:]
    return stderr.strip()


def tool_message(output: str, prog: str) -> str:
    """What a tool (qemu-img, qemu-io) reported, without the ``<prog>: `` that
    error_report() puts before each of its lines (util/qemu-error.c print_loc)."""
    lines = [line.removeprefix(f"{prog}: ") for line in output.strip().splitlines()]
    return "\n".join(lines)


def ro_mismatches(want: Mapping[str, bool], got: Mapping[str, bool | None]) -> list[str]:
    """How the ``ro`` flags *got* (node -> ro, None: missing) differ from *want*."""
    out = []
    for node, expected in want.items():
        have = got.get(node)
        if have is None:
            out.append(f"node {node} missing (nodes: {sorted(n for n, v in got.items() if v is not None)})")
        elif have != expected:
            out.append(f"{node}.ro={have}, expected {expected}")
    return out


def mismatches(exp: Expect, got: Outcome) -> list[str]:
    """Every way *got* differs from *exp* (empty: as expected)."""
    if got.died:
        return [f"QEMU died ({got.died})"]
    out = []
    if exp.ok is not None and exp.ok != got.ok:
        out.append("succeeded" if got.ok else "failed")
    elif not got.ok and exp.error is not None and not re.fullmatch(exp.error, got.error.strip()):
        out.append("error message differs")
    out += ro_mismatches(exp.ro, got.ro)
    for label, mode in exp.fds.items():
        modes = got.fds.get(label, [])
        if modes != [mode]:
            out.append(f"{label} fd modes {modes or 'none'}, expected one {mode} fd")
    for label, ranges in exp.locks.items():
        have = got.locks.get(label)
        if have != list(ranges):
            out.append(f"{label} locks {'not read' if have is None else ' '.join(have) or 'none'}, "
                       f"expected {' '.join(ranges) or 'none'}")
    for probe, text in got.others.items():
        if probe not in exp.others:
            out.append(f"{probe} ran but nothing is expected of it")
        elif text != exp.others[probe]:
            out.append(f"{probe} {'refused: ' + repr(text) if text else 'opened the image'}, expected "
                       f"{'refusal ' + repr(exp.others[probe]) if exp.others[probe] else 'it to open it'}")
    # -drive: the BlockBackend's view must agree with the node's
    if got.blk_ro is not None and "n0" in exp.ro and got.blk_ro != exp.ro["n0"]:
        out.append(f"query-block inserted.ro={got.blk_ro}, expected {exp.ro['n0']}")
    return out


def predicted(exp: Expect, bug: KnownBug) -> Expect:
    """*exp* with *bug*'s deviation applied: what a build with the bug does."""
    dev = bug.deviation
    return exp.replace(ok=exp.ok if dev.ok is None else dev.ok,
                       error=dev.error if dev.ok is False else exp.error,
                       ro={**exp.ro, **dev.ro}, fds={**exp.fds, **dev.fds},
                       locks={**exp.locks, **dev.locks}, bug=None,
                       because=f"known QEMU bug {bug.reason}")


def matches_prediction(exp: Expect, bug: KnownBug, got: Outcome) -> bool:
    """Whether QEMU did exactly what *bug* predicts at the step expected as *exp*."""
    if bug.deviation.abort is not None:
        return got.died == "killed by SIGABRT" and bug.deviation.abort in got.stderr
    return not mismatches(predicted(exp, bug), got)


def _note(what: str, build: str, problems: list[str], exp: Expect, got: Outcome, *,
          bug: KnownBug | None = None, verdict: str) -> None:
    """Put the check into the running test's evidence, for the results file and HTML report."""
    # The running test's crash watch holds its evidence; outside the plugin's fixtures
    # (unit tests of the rules) there is none and nothing to record.
    watch = crashes.current()
    if watch is None:
        return
    fields = {"what": what, "build": build, "verdict": verdict, "problems": "; ".join(problems),
              "expected": exp.describe(), "because": exp.because, "did": got.describe()}
    if bug is not None:
        fields.update(bug=bug.id, bug_reason=bug.reason, bug_cause=bug.cause,
                      predicted=bug.deviation.describe())
    watch.evidence.finding(**fields)


def _journal_check(what: str, exp: Expect, got: Outcome, problems: list[str],
                   bug: KnownBug | None = None) -> None:
    """The check of a step, in the evidence's journal: the expected outcome and its rule
    go into a reproducer's comments, and a step that deviated marks its observations
    as the ones the reproducer's verdict rests on (reproduce.py)."""
    watch = crashes.current()
    if watch is None:
        return
    watch.evidence.journal.add(
        "check", what=what, expected=exp.describe(), because=exp.because, observed=got.describe(),
        problems=problems, bug=None if bug is None else bug.reason,
        predicts=None if bug is None else bug.deviation.describe())


def _message(what: str, build: str, context: str, problems: list[str], exp: Expect, got: Outcome) -> str:
    where = f"build {build}" + (f"; {context}" if context else "")
    return (f"{what} [{where}]: " + "; ".join(problems) + "\n"
            f"  expected: {exp.describe()}\n"
            f"  because:  {exp.because}\n"
            f"  QEMU did: {got.describe()}")


def check(exp: Expect, got: Outcome, *, what: str, build: str, context: str = "") -> None:
    """Fail with expected-vs-actual and the rule if *got* does not match *exp* (no known bugs:
    use :class:`CaseCheck` for a case whose expectations may carry one)."""
    if exp.bug is not None:
        raise ValueError(f"{what}: the expectation carries known bug {exp.bug.id}: use CaseCheck")
    crashes.fail_now(f"at {what}")  # a dead QEMU says so, not "fd modes none"
    problems = mismatches(exp, got)
    _journal_check(what, exp, got, problems)
    if problems:
        _note(what, build, problems, exp, got, verdict="failed")
        raise AssertionError(_message(what, build, context, problems, exp, got))


class CaseCheck:
    """The checks of one case, step by step, with known bugs handled one way everywhere.

    At a step whose expectation carries a bug that hits this case on this
    build: QEMU doing exactly what the bug predicts is a hit (:meth:`step`
    returns True, the caller follows the buggy timeline); QEMU doing what a
    fixed build does is noted and fails at :meth:`finish` like a strict XPASS;
    anything else fails at once, naming the expectation and the prediction.
    :meth:`finish` ends a case that hit its bugs as xfail.
    """

    def __init__(self, scenario: str, case_id: str, *, build: str, caps: Capabilities,
                 context: str = "") -> None:
        self.scenario, self.case_id, self.build, self.caps = scenario, case_id, build, caps
        self.context = context
        self.hit: list[KnownBug] = []
        self.not_reproduced: list[tuple[KnownBug, str]] = []

    def active(self, bug: KnownBug | None) -> bool:
        """Whether *bug* hits this case on this build."""
        return bug is not None and bug.hits(self.scenario, self.case_id) and bug.affects(self.caps)

    def step(self, exp: Expect, got: Outcome, *, what: str) -> bool:
        """Check one step; True if it showed its known bug (then follow the buggy timeline)."""
        problems = mismatches(exp, got)
        bug = exp.bug if self.active(exp.bug) else None
        _journal_check(what, exp, got, problems, bug)
        watch = crashes.current()
        if watch is not None:
            if bug is not None and bug.deviation.abort is not None and matches_prediction(exp, bug, got):
                watch.excuse(-signal.SIGABRT, bug.deviation.abort, f"expected: known QEMU bug {bug.id}")
            watch.fail_now(f"at {what}")  # a dead QEMU says so, not "fd modes none"
        if bug is None:
            if problems:
                _note(what, self.build, problems, exp, got, verdict="failed")
                text = _message(what, self.build, self.context, problems, exp, got)
                if exp.bug is not None:
                    text += f"\n  (known bug {exp.bug.id} does not apply to this case or build)"
                raise AssertionError(text)
            return False
        if not problems:
            _note(what, self.build, [], exp, got, bug=bug, verdict="known bug not reproduced")
            self.not_reproduced.append((bug, what))
            return False
        if matches_prediction(exp, bug, got):
            _note(what, self.build, problems, exp, got, bug=bug, verdict="known bug")
            if bug not in self.hit:
                self.hit.append(bug)
            return True
        _note(what, self.build, problems, exp, got, bug=bug, verdict="failed")
        raise AssertionError(_message(what, self.build, self.context, problems, exp, got)
                             + f"\n  known QEMU bug {bug.id} predicts instead: {bug.deviation.describe()}"
                               " - QEMU did neither")

    def finish(self) -> None:
        """Fail for known bugs a fixed build no longer shows; xfail a case that hit its bugs."""
        if self.not_reproduced:
            raise AssertionError("\n".join(
                f"[XPASS(strict)] known bug {bug.id} not reproduced on build {self.build} "
                f"({self.case_id}, at {what}): fixed? update scenario/known_bugs.py\n  {bug.describe()}"
                for bug, what in self.not_reproduced))
        if self.hit:
            pytest.xfail("; ".join(bug.reason for bug in self.hit))
