"""The probe itself: one QEMU launch that fills :class:`~.probe.Capabilities`."""
from __future__ import annotations

import shutil
from typing import Any
from pathlib import Path

from .build import QemuBuild
from ..evidence import TestEvidence
from .instance import Timeouts, launch
from .capabilities import MODULE_DRIVERS, Capabilities, qmp_facts, static_facts
from ..host.process import ProcessRegistry

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


def probe_build(build: QemuBuild, registry: ProcessRegistry, workdir: Path,
                timeouts: Timeouts) -> Capabilities:
    """Launch the build once and ask it what it has."""
    facts = static_facts(build, timeouts.tool)
    accel = "qtest" if "qtest" in facts["accelerators"] else "tcg"
    workdir.mkdir(parents=True, exist_ok=True)
    evidence = TestEvidence(workdir / build.name, f"probe {build.name}")
    vm = launch("system", build, [], accel=accel, registry=registry, evidence=evidence,
                timeouts=timeouts, name=f"probe-{build.name}")
    try:
        version = vm.execute("query-version")
        schema = vm.execute("query-qmp-schema")
        driver_errors: dict[str, str | None] = {}
        for i, drv in enumerate(MODULE_DRIVERS):
            err = vm.execute_error("blockdev-add", {"driver": drv, "node-name": f"probe{i}",
                                                    "read-only": True, **_PROBE_OPTIONS[drv]})
            if err is None:
                vm.execute("blockdev-del", {"node-name": f"probe{i}"})
                driver_errors[drv] = None
            elif any(s in err.desc for s in _NOT_LOADED):
                driver_errors[drv] = err.desc
            else:
                driver_errors[drv] = None  # loaded; it just could not connect
    finally:
        vm.shutdown()
    shutil.rmtree(workdir / build.name, ignore_errors=True)
    q = version["qemu"]
    return Capabilities(
        version=[q["major"], q["minor"], q["micro"]],
        package=version.get("package", "").strip(),
        driver_errors=driver_errors,
        **facts,
        **qmp_facts(schema),
    )
