"""Scenarios that run in steps: do one QMP step, observe the nodes and fds, compare.

The dynamic and jobs suites drive one QEMU through a sequence of steps
(attach a writer, reopen, start a block job...). After *each* step, also a
refused one, the named nodes' ``ro`` and QEMU's file descriptors are read
(:func:`observe_state`) and compared with a :class:`StepExpect` from the
expectations package (:func:`check_step`). A failure names the step, the
build, the node setup and storage, what was expected and why, and what QEMU
did.

Known QEMU bugs: an expectation may carry ``bug`` (the step where a known bug
shows). A mismatch there raises :class:`KnownQemuBug` instead of a plain
AssertionError, and :func:`xfail_known_bug` makes a case listed in
``expectations.KNOWN_BUGS`` an ``xfail(strict=True, raises=KnownQemuBug)``:
any other deviation still fails, and a build where the bug is fixed shows up
as XPASS(strict), i.e. a failure telling to drop (or limit) the entry.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

import pytest

from ..host import procfs as hostfacts
from .compare import ro_mismatches
from .known_bugs import known_bug

if TYPE_CHECKING:
    from ..qemu.instance import QemuInstance
    from ..qemu.qmp import QmpError


class KnownQemuBug(AssertionError):
    """QEMU deviated exactly where a known bug (``expectations.KNOWN_BUGS``) says it does."""


@dataclass(frozen=True)
class StepExpect:
    """The expected outcome of one step and the state it leaves behind.

    The state is checked after refused steps too: a refused step must leave
    the nodes as they were.
    """

    ok: bool  # the QMP command (or the step) succeeds
    error: str | None = None  # regex that must match the *whole* error text
    ro: Mapping[str, bool] = field(default_factory=dict)  # node-name -> query-named-block-nodes ro
    fds: Mapping[str, str] = field(default_factory=dict)  # image label -> mode of QEMU's one fd for it
    because: str = ""
    bug: str | None = None  # a known QEMU bug makes QEMU deviate from this expectation

    def describe(self) -> str:
        head = "succeeds" if self.ok else f"fails with {_shown(self.error)}"
        state = [f"{n}.ro={v}" for n, v in self.ro.items()] + [f"{k} fd {m}" for k, m in self.fds.items()]
        return head + (", then " + ", ".join(state) if state else "")


def _shown(error: str | None) -> str:
    """An error regex for humans: escaped literal text (re.escape) shown as the text itself."""
    if error is None:
        return "any error"
    plain = re.sub(r"\\(.)", r"\1", error)
    return f"exactly {plain!r}" if re.escape(plain) == error or re.fullmatch(error, plain) else f"/{error}/"


@dataclass
class StepResult:
    """What one step did and the state afterwards."""

    ok: bool
    error: str = ""
    ro: dict[str, bool | None] = field(default_factory=dict)  # None: node missing
    fds: dict[str, list[str]] = field(default_factory=dict)
    detail: str = ""  # extra output worth showing (e.g. qemu-io's)

    def describe(self) -> str:
        head = "succeeded" if self.ok else f"failed: {self.error.strip()}"
        state = ([f"{n}.ro={'missing' if v is None else v}" for n, v in self.ro.items()]
                 + [f"{k} fd {','.join(m) or 'none'}" for k, m in self.fds.items()])
        text = head + (", then " + ", ".join(state) if state else "")
        return text + (f" ({self.detail.strip()})" if self.detail.strip() else "")


def observe_state(vm: "QemuInstance", nodes: Iterable[str], images: Mapping[str, Path]
                  ) -> tuple[dict[str, bool | None], dict[str, list[str]]]:
    """``ro`` of *nodes* (query-named-block-nodes) and the access modes of QEMU's fds per image."""
    named = vm.nodes()
    ro = {n: (bool(named[n]["ro"]) if n in named else None) for n in nodes}
    fds = {label: hostfacts.fd_modes(vm.pid, path) for label, path in images.items()}
    return ro, fds


def result(vm: "QemuInstance", err: "QmpError | None", nodes: Iterable[str],
           images: Mapping[str, Path], detail: str = "") -> StepResult:
    """A :class:`StepResult` for a QMP step that returned *err* (None: success)."""
    ro, fds = observe_state(vm, nodes, images)
    return StepResult(err is None, err.desc if err is not None else "", ro, fds, detail)


def mismatches(exp: StepExpect, got: StepResult) -> list[str]:
    """Every way *got* differs from *exp* (empty: as expected)."""
    out = []
    if exp.ok != got.ok:
        out.append("succeeded" if got.ok else "failed")
    elif not exp.ok and exp.error is not None and not re.fullmatch(exp.error, got.error.strip()):
        out.append("error text differs")
    out += ro_mismatches(exp.ro, got.ro)
    for label, mode in exp.fds.items():
        modes = got.fds.get(label, [])
        if modes != [mode]:
            out.append(f"{label} fd modes {modes or 'none'}, expected one {mode} fd")
    return out


def check_step(exp: StepExpect, got: StepResult, *, what: str, build: str, context: str) -> None:
    """Fail with expected-vs-actual, the rule and the setup if *got* does not match *exp*."""
    problems = mismatches(exp, got)
    if not problems:
        return
    text = (f"{what} [build {build}; {context}]: " + "; ".join(problems) + "\n"
            f"  expected: {exp.describe()}\n"
            f"  because:  {exp.because}\n"
            f"  QEMU did: {got.describe()}")
    if exp.bug:
        raise KnownQemuBug(text + f"\n  known QEMU bug: {exp.bug}")
    raise AssertionError(text)


def xfail_known_bug(request: pytest.FixtureRequest, bug: str | None) -> None:
    """Make this test a strict xfail for *bug* (from ``expectations.KNOWN_BUGS``), if any.

    ``raises=KnownQemuBug``: only the deviation the bug predicts counts as the
    expected failure; anything else fails as usual, and a build without the
    bug XPASSes (strict), which fails and says to update the entry. Applied
    at run time, because whether a build has a bug is known only then.
    """
    if bug is not None:
        request.applymarker(pytest.mark.xfail(strict=True, raises=KnownQemuBug, reason=bug))


def with_known_bugs(scenario: str, params: list) -> list:  # list[pytest.param]
    """*params* (from :func:`matrix.cases`), those listed in ``KNOWN_BUGS`` marked as strict xfail
    at collection time (for bugs that every build has; see :func:`xfail_known_bug` otherwise).

    ``raises=KnownQemuBug``: only the deviation the bug predicts counts as the
    expected failure; anything else fails as usual.
    """
    out = []
    for p in params:
        bug = known_bug(scenario, p.id)
        if bug is None:
            out.append(p)
        else:
            mark = pytest.mark.xfail(strict=True, raises=KnownQemuBug, reason=bug)
            out.append(pytest.param(*p.values, id=p.id, marks=[*p.marks, mark]))
    return out
