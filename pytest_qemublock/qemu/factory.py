"""The ``qemu`` fixture's object: start QEMUs for one test, stop them after."""
from __future__ import annotations

from collections.abc import Sequence

from ..host.process import ProcessError
from .context import RunContext
from .instance import LaunchError, QemuInstance, Wrapper, launch


class QemuFactory:
    """Starts qemu-system / qemu-storage-daemon for one test and owns them.

    Every instance is shut down at teardown; one that died on its own during
    the test (a crash) makes teardown fail with its exit status and stderr.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.build = ctx.build
        self.registry = ctx.registry
        self.evidence = ctx.evidence
        self.instances: list[QemuInstance] = []
        self._names: dict[str, int] = {}

    def _name(self, base: str) -> str:
        n = self._names.get(base, 0) + 1
        self._names[base] = n
        return base if n == 1 else f"{base}{n}"

    def start(self, *args: str, machine: str = "none", wrapper: Wrapper = Wrapper(),
              name: str = "qemu") -> QemuInstance:
        """Start the build's qemu-system with *args* (``-blockdev ...``); QMP is ready on return."""
        return self._start("system", args, machine, wrapper, name)

    def start_qsd(self, *args: str, wrapper: Wrapper = Wrapper(), name: str = "qsd") -> QemuInstance:
        """Start qemu-storage-daemon with *args* (``--blockdev ...``)."""
        if not self.build.has("qsd"):
            import pytest

            pytest.skip(f"build {self.build.name} has no qemu-storage-daemon "
                        f"(Debian package qemu-system-common, or pass --qemu-storage-daemon)")
        return self._start("qsd", args, "none", wrapper, name)

    def start_fails(self, *args: str, kind: str = "system", machine: str = "none",
                    wrapper: Wrapper = Wrapper(), name: str = "qemu") -> LaunchError:
        """Start QEMU expecting it to refuse; return the :class:`LaunchError`.

        Fails the test if QEMU starts after all (and stops that QEMU).
        """
        try:
            vm = self._start(kind, args, machine, wrapper, name)
        except LaunchError as e:
            return e
        nodes = vm.try_execute("query-named-block-nodes")
        raise AssertionError(
            f"{name} ({self.build.name}) started, but was expected to refuse:\n"
            f"  command: {vm.proc.command_line()}\n  nodes: {nodes}")

    def _start(self, kind: str, args: Sequence[str], machine: str, wrapper: Wrapper,
               name: str) -> QemuInstance:
        ctx = self.ctx
        vm = launch(kind, ctx.build, list(args), accel=ctx.accel, registry=ctx.registry,
                    evidence=ctx.evidence, timeouts=ctx.timeouts, machine=machine,
                    wrapper=wrapper, name=self._name(name))
        self.instances.append(vm)
        self.evidence.add_snapshot(vm.nodes_snapshot)
        return vm

    def shutdown_all(self) -> list[str]:
        """Stop every instance; returns the problems (crashes) found."""
        problems = [p for vm in reversed(self.instances) if (p := stop_instance(vm))]
        self.instances.clear()
        return problems


def stop_instance(vm: QemuInstance) -> str | None:
    """Shut *vm* down (its process leaves the registry once reaped); the problem
    (a crash) if there was one."""
    try:
        vm.shutdown()
    except ProcessError as e:
        return str(e)
    return None
