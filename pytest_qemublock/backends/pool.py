"""Targets shared by the cases of one test module.

The open matrix asks for the same (backend, storage, recipe) 36 times per
build, and starting its server is the dearest part of many cases (tgtd
50 ms to start and 110 ms to stop, sshd 50 ms, a QEMU export 40 ms). Cases
that only open a node and close it again may share one target: the pool
keeps one per key for the module, hands out a fresh one when the old one's
processes died, and stops everything at module end. A process of the build
under test (qemu-nbd, qsd, the export or hot-plug QEMU) found dead fails the
case that finds it (:mod:`~pytest_qemublock.qemu.crashes`) before it is replaced.

Cases that write, flip storage or stop servers must not share: they use
``targets.target()``. A shared target's server shows up in each test's
evidence (command line, stderr) like one of its own.

A shared target can also come with a running QEMU to hot-plug nodes into
(:meth:`TargetPool.hotplug_qemu`): ``blockdev-add``/``blockdev-del`` cycles
on one QEMU, the way libvirt drives it, instead of one QEMU per case (a
launch is ~20 ms of a 25 ms case). The QEMU is lent to one test at a time:
its QMP transcript goes into that test's evidence, and it is only lent out
with no node left in it, so a case that failed to clean up costs the next
one a fresh QEMU, never a wrong result.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..evidence import TestEvidence
from ..qemu import crashes
from ..qemu.factory import stop_instance
from ..qemu.instance import QemuInstance, launch
from ..storage.images import Tools
from .base import Target
from .provisioner import Provisioner, new_provisioner


@dataclass
class _Shared:
    """One shared target, the provisioner that owns its servers, and its hot-plug QEMU."""

    owner: Provisioner
    target: Target
    vm: QemuInstance | None = None

    def close(self) -> list[str]:
        problems = []
        if self.vm is not None:
            alive = self.vm.alive()
            problem = stop_instance(self.vm)
            if problem and alive:  # a crash was already reported by the case it happened in
                problems.append(problem)
            self.vm = None
        return problems + self.owner.close()


class TargetPool:
    """One module's shared targets (the ``qb_target_pool`` fixture)."""

    def __init__(self, label: str, new_workdir: Callable[[str], Path], keep_workdirs: bool = False) -> None:
        self.label = label
        #: makes the pool's work dir (the session's, so that it is removed with the run's)
        self._new_workdir = new_workdir
        self._keep_workdirs = keep_workdirs
        self._workdir: Path | None = None
        self._entries: dict[tuple[str, str, str, str], _Shared] = {}

    def get(self, prov: Provisioner, backend: str, storage: str, recipe: str) -> Target:
        """The shared target for this key, created through a provisioner of its own."""
        key = (prov.build.name, backend, storage, recipe)
        entry = self._entries.get(key)
        if entry is not None and not _healthy(entry.owner):
            del self._entries[key]
            procs = list(entry.owner.server_ctx.evidence.processes)
            try:
                # a crash between cases fails the case that finds it; the next gets a fresh one
                crashes.fail_if_crashed(prov.build, procs,
                                        f"when lent to this case (shared {entry.target.describe()})",
                                        f"reported by {prov.server_ctx.evidence.nodeid}")
            finally:
                entry.close()
            entry = None
        if entry is None:
            owner = self._provisioner(prov, "-".join(key))
            try:
                target = owner.target(backend, storage, recipe)
            except BaseException:
                owner.close()
                raise
            entry = self._entries[key] = _Shared(owner, target)
        prov.server_ctx.evidence.journal.extend(entry.owner.server_ctx.evidence.journal)
        for proc in entry.owner.server_ctx.evidence.processes:
            prov.server_ctx.evidence.add_process(proc)
        return entry.target

    def hotplug_qemu(self, prov: Provisioner, target: Target) -> QemuInstance:
        """A QEMU (``-M none``, no nodes) kept running for the module's cases on the shared
        *target*, lent to the test *prov* belongs to."""
        entry = next((e for e in self._entries.values() if e.target is target), None)
        if entry is None:
            raise ValueError(f"{target.describe()} is not one of this module's shared targets")
        evidence = prov.server_ctx.evidence
        if entry.vm is not None:
            entry.vm.qmp.retarget(evidence.transcript(entry.vm.name))
            if not _clean(entry.vm):
                vm, entry.vm = entry.vm, None
                try:
                    at = f"when lent to this case (hot-plug QEMU on shared {target.describe()})"
                    crashes.fail_if_crashed(prov.build, [vm.proc], at, f"reported by {evidence.nodeid}")
                finally:
                    stop_instance(vm)
        if entry.vm is None:
            ctx = entry.owner.server_ctx
            entry.vm = launch("system", ctx.build, [], accel=ctx.accel, registry=ctx.registry,
                              evidence=ctx.evidence, timeouts=ctx.timeouts, wrapper=target.wrapper,
                              name="qemu-hotplug")
            entry.vm.qmp.retarget(evidence.transcript(entry.vm.name))
        evidence.add_process(entry.vm.proc)
        evidence.add_snapshot(entry.vm.nodes_snapshot)
        return entry.vm

    def _provisioner(self, prov: Provisioner, name: str) -> Provisioner:
        if self._workdir is None:
            self._workdir = self._new_workdir(f"shared targets of {self.label}")
        workdir = self._workdir / name
        ctx = prov.server_ctx.with_evidence(TestEvidence(workdir, f"{self.label} [{name}]"))
        return new_provisioner(ctx, Tools(ctx, template_dir=prov.tools.template_dir))

    def close(self) -> list[str]:
        problems = []
        for entry in self._entries.values():
            procs = list(entry.owner.server_ctx.evidence.processes)
            problems += entry.close()
            # a crash after the module's last case used it (no later case will find it),
            # known once they are stopped: one may still have been exiting
            build = entry.owner.build
            for proc in crashes.dead_unnoted(build, procs):
                problems.append(crashes.crash_line(build, proc, "at the end of the module"))
                proc.death_noted = "reported at the end of the module"
        self._entries.clear()
        if self._workdir is not None and not self._keep_workdirs:
            shutil.rmtree(self._workdir, ignore_errors=True)
        return problems


def _clean(vm: QemuInstance) -> bool:
    """Alive, and the last case removed every node it added."""
    if not vm.alive():
        return False
    try:
        return vm.qmp.try_execute("query-named-block-nodes", timeout=vm.timeouts.qmp) == []
    except Exception:  # noqa: BLE001 - QMP gone or hung: not reusable either way
        return False


def _healthy(owner: Provisioner) -> bool:
    """Every process behind the target still runs (a crash elsewhere must not leak in)."""
    return all(p.alive() for p in owner.server_ctx.evidence.processes)
