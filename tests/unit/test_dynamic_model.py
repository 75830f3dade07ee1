"""The dynamic scenario's Model without QEMU: step sequences, incl. the buggy timeline."""
from __future__ import annotations

from helpers_unit import caps, file_target

from pytest_qemublock.expectations.dynamic_aro import Model
from pytest_qemublock.scenario import known_bugs
from pytest_qemublock.scenario.outcome import IMAGE, O_RDONLY, O_RDWR
from pytest_qemublock.scenario.writers import Attach, Detach, Reopen, export, scsi_hd

E1 = export("e1")


def fds(model: Model, steps: list) -> list[str]:  # type: ignore[type-arg]
    return [model.step(s).fds[IMAGE] for s in steps]


def test_writer_cycles_switch_the_fd() -> None:
    m = Model(file_target("rw"), caps())
    assert fds(m, [Attach(E1), Detach("e1"), Attach(E1), Detach("e1")]) == [
        O_RDWR, O_RDONLY, O_RDWR, O_RDONLY]


def test_writer_refused_on_read_only_storage() -> None:
    m = Model(file_target("erofs"), caps())
    exp = m.step(Attach(scsi_hd("sd0")))
    assert exp.ok is False and exp.fds[IMAGE] == O_RDONLY
    assert exp.error == r"Could not open '/srv/st\-erofs/raw\.img': Read\-only\ file\ system"


def test_reopen_under_a_writer_carries_the_stale_flags_bug_at_the_detach() -> None:
    m = Model(file_target("rw"), caps())
    steps = [Attach(E1), Reopen(False, True), Detach("e1")]
    exps = [m.step(s) for s in steps]
    assert [e.bug for e in exps] == [None, None, known_bugs.STALE_FLAGS_LAST_WRITER]
    assert exps[-1].fds[IMAGE] == O_RDONLY  # the expectation is what a fixed build does


def test_buggy_timeline_keeps_the_stale_fd_and_the_next_cycle_heals_it() -> None:
    m = Model(file_target("rw"), caps())
    for s in (Attach(E1), Reopen(False, True)):
        m.step(s)
    exp = m.step(Detach("e1"))
    m.bug_seen(exp.bug)  # QEMU kept the O_RDWR fd
    attach = m.step(Attach(E1))
    assert attach.fds[IMAGE] == O_RDWR and attach.bug is None
    assert "heals the stale flags" in attach.because
    detach = m.step(Detach("e1"))
    assert detach.fds[IMAGE] == O_RDONLY and detach.bug is None


def test_fixed_timeline_needs_no_heal() -> None:
    m = Model(file_target("rw"), caps())
    for s in (Attach(E1), Reopen(False, True), Detach("e1")):
        m.step(s)
    attach = m.step(Attach(E1))
    assert attach.fds[IMAGE] == O_RDWR and "heals" not in attach.because
