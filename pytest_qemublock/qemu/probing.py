"""The probe itself: one QEMU launch that fills :class:`~.probe.Capabilities`."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import QemuBlockError
from ..evidence import TestEvidence
from ..host.process import ProcessError, ProcessRegistry, describe_status
from .build import QemuBuild
from .capabilities import MODULE_DRIVERS, Capabilities, qmp_facts, static_facts
from .instance import LaunchError, QemuInstance, Timeouts, launch
from .qmp import QmpCommandError, QmpTimeout

# Options that are wrong on purpose: a driver that loads complains about
# them; one that does not load says "Unknown driver" or a module error.
_PROBE_OPTIONS: dict[str, dict[str, Any]] = {
    "http": {"url": "http://127.0.0.1:9/probe"},
    "https": {"url": "https://127.0.0.1:9/probe"},
    "ssh": {"server": {"host": "127.0.0.1", "port": "9"}, "path": "/probe"},
    "iscsi": {"transport": "tcp", "portal": "127.0.0.1:9", "target": "iqn.probe", "lun": 0},
    "nfs": {"server": {"type": "inet", "host": "127.0.0.1"}, "path": "/probe"},
    "rbd": {"pool": "probe", "image": "probe"},
    "gluster": {"volume": "probe", "path": "/probe", "server": [{"type": "unix", "path": "/nonexistent"}]},
}
_NOT_LOADED = ("Unknown driver", "module", "not whitelisted", "Invalid parameter 'driver'")


class ProbeError(QemuBlockError):
    """The build could not be probed (its QEMU died or refused): nothing can run on it."""


def probe_build(build: QemuBuild, registry: ProcessRegistry, workdir: Path,
                timeouts: Timeouts) -> Capabilities:
    """Launch the build once and ask it what it has.

    Raises :class:`ProbeError` (one line: build, binary, what it said last) if it cannot.
    """
    system = build.path("system")
    step = f"`{system.name} -accel help`"
    try:
        facts = static_facts(build, timeouts.tool)
        accel = "qtest" if "qtest" in facts["accelerators"] else "tcg"
        workdir.mkdir(parents=True, exist_ok=True)
        evidence = TestEvidence(workdir / build.name, f"probe {build.name}")
        step = "start-up"
        vm = launch("system", build, [], accel=accel, registry=registry, evidence=evidence,
                    timeouts=timeouts, name=f"probe-{build.name}")
    except LaunchError as e:
        raise ProbeError(_probe_failed(build, step, describe_status(e.exitcode), e.stderr)) from None
    except (ProcessError, OSError) as e:
        raise ProbeError(_probe_failed(build, step, "failed", str(e))) from None
    try:
        step = "query-version"
        version = vm.execute("query-version")
        step = "query-target"
        target = vm.execute("query-target")["arch"]
        step = "query-qmp-schema"
        schema = vm.execute("query-qmp-schema")
        driver_errors: dict[str, str | None] = {}
        for i, drv in enumerate(MODULE_DRIVERS):
            step = f"blockdev-add of driver {drv}"
            err = vm.execute_error("blockdev-add", {"driver": drv, "node-name": f"probe{i}",
                                                    "read-only": True, **_PROBE_OPTIONS[drv]})
            if err is None:
                vm.execute("blockdev-del", {"node-name": f"probe{i}"})
                driver_errors[drv] = None
            elif any(s in err.desc for s in _NOT_LOADED):
                driver_errors[drv] = err.desc
            else:
                driver_errors[drv] = None  # loaded; it just could not connect
    except (ProcessError, QmpCommandError, QmpTimeout, OSError) as e:
        alive = vm.alive()
        status = "answered an error" if alive else describe_status(vm.proc.returncode)
        stderr = str(e) if alive else vm.proc.stderr_text()
        vm.proc.death_noted = "reported as a probe failure"
        _quiet_shutdown(vm)
        raise ProbeError(_probe_failed(build, f"QMP {step}", status, stderr)) from None
    _quiet_shutdown(vm)
    shutil.rmtree(workdir / build.name, ignore_errors=True)
    if target != build.arch.name:
        # a qemu-system whose name does not say its arch (a wrapper) was taken as x86_64
        raise ProbeError(f"build {build.name}: {system} is a QEMU for {target} (QMP query-target), "
                         f"not {build.arch.name}: choose the arch with --qb-arch {target} "
                         f"or --qemu-build DIR:{target}")
    q = version["qemu"]
    return Capabilities(
        version=[q["major"], q["minor"], q["micro"]],
        package=version.get("package", "").strip(),
        driver_errors=driver_errors,
        **facts,
        **qmp_facts(schema),
    )


def _quiet_shutdown(vm: QemuInstance) -> None:
    try:
        vm.shutdown()
    except ProcessError:
        pass  # a probe that died is reported as such by the caller


def _probe_failed(build: QemuBuild, step: str, status: str, stderr: str) -> str:
    """One line: which build and binary, at which step, how, and what it said last."""
    last = next((line.strip() for line in reversed(stderr.strip().splitlines()) if line.strip()),
                "(no output)")
    env = f" with {' '.join(f'{k}={v}' for k, v in build.env.items())}" if build.env else ""
    return (f"build {build.name}: cannot probe {build.path('system')}{env}: "
            f"{status} at {step}; it said: {last}")
