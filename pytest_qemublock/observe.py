"""Opening a node through each interface, observing the result, comparing it.

The four interfaces QEMU offers for the same node are driven the same way:
``-blockdev`` (JSON), ``-drive`` (QemuOpts, commas escaped), QMP
``blockdev-add`` and ``qemu-storage-daemon --blockdev``. What QEMU did is an
:class:`Observed`; :func:`check` compares it with an
:class:`~pytest_qemublock.expectations.Expect` and fails with both side by side.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import hostfacts
from .backends import Target
from .errors import LaunchError
from .expectations import Expect
from .factory import QemuFactory
from .machine import QemuInstance


def qemu_opt_escape(value: str) -> str:
    """QemuOpts value escaping: a comma is written twice."""
    return value.replace(",", ",,")


def flatten(opts: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``{"file": {"driver": "file"}}`` -> ``[("file.driver", "file")]`` (dotted keys)."""
    out: list[tuple[str, str]] = []
    for key, value in opts.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += flatten(value, name + ".")
        elif isinstance(value, bool):
            out.append((name, "on" if value else "off"))
        else:
            out.append((name, str(value)))
    return out


def drive_arg(opts: Mapping[str, Any], drive_id: str = "d0") -> str:
    """A ``-drive`` argument for the node described by blockdev *opts*."""
    pairs = [("if", "none"), ("id", drive_id), *flatten(opts)]
    return ",".join(f"{k}={qemu_opt_escape(v)}" for k, v in pairs)


@dataclass
class Observed:
    """What QEMU did when asked to open a node."""

    interface: str
    opened: bool
    error: str = ""
    ro: dict[str, bool] = field(default_factory=dict)
    fd: list[str] = field(default_factory=list)
    blk_ro: bool | None = None  # query-block inserted.ro (-drive only)
    vm: QemuInstance | None = None

    def describe(self) -> str:
        if not self.opened:
            return f"error: {self.error.strip()}"
        parts = [f"{n}.ro={v}" for n, v in sorted(self.ro.items())]
        if self.fd:
            parts.append(f"fd={','.join(self.fd)}")
        if self.blk_ro is not None:
            parts.append(f"query-block ro={self.blk_ro}")
        return "opened, " + ", ".join(parts)


def open_node(qemu: QemuFactory, interface: str, opts: Mapping[str, Any], target: Target,
              *, machine: str = "none") -> Observed:
    """Open the node *opts* (node-name ``n0``) through *interface* and observe it."""
    vm: QemuInstance | None = None
    error = ""
    try:
        if interface == "blockdev":
            vm = qemu.start("-blockdev", json.dumps(opts), machine=machine, wrapper=target.wrapper)
        elif interface == "drive":
            vm = qemu.start("-drive", drive_arg(opts), machine=machine, wrapper=target.wrapper)
        elif interface == "qsd":
            vm = qemu.start_qsd("--blockdev", json.dumps(opts), wrapper=target.wrapper)
        elif interface == "qmp":
            vm = qemu.start(machine=machine, wrapper=target.wrapper)
            err = vm.execute_error("blockdev-add", dict(opts))
            if err is not None:
                return Observed(interface, False, f"[{err.error_class}] {err.desc}", vm=vm)
        else:
            raise ValueError(f"unknown interface {interface!r}")
    except LaunchError as e:
        error = e.stderr or str(e)
        return Observed(interface, False, error)
    assert vm is not None
    return observe(vm, interface, target)


def observe(vm: QemuInstance, interface: str, target: Target) -> Observed:
    """The current state of *target*'s nodes in *vm*."""
    ro = {name: bool(n["ro"]) for name, n in vm.nodes().items() if not name.startswith("#")}
    obs = Observed(interface, True, ro=ro, vm=vm)
    if target.fd_path is not None:
        obs.fd = hostfacts.fd_modes(vm.pid, target.fd_path)
    if interface == "drive":
        for blk in vm.execute("query-block"):
            if blk.get("device") == "d0" and "inserted" in blk:
                obs.blk_ro = bool(blk["inserted"]["ro"])
    return obs


def mismatches(exp: Expect, obs: Observed) -> list[str]:
    """Every way *obs* differs from *exp* (empty: as expected)."""
    out = []
    if exp.opens != obs.opened:
        out.append("opened" if obs.opened else "failed to open")
        return out
    if not exp.opens:
        if exp.error and not re.search(exp.error, obs.error):
            out.append(f"error text does not match /{exp.error}/")
        return out
    for node, want in exp.ro.items():
        got = obs.ro.get(node)
        if got is None:
            out.append(f"node {node} missing (nodes: {sorted(obs.ro)})")
        elif got != want:
            out.append(f"{node}.ro={got}, expected {want}")
    if exp.fd is not None and obs.fd != [exp.fd]:
        out.append(f"fd modes {obs.fd or 'none'}, expected one {exp.fd} fd")
    if obs.blk_ro is not None and "n0" in exp.ro and obs.blk_ro != exp.ro["n0"]:
        out.append(f"query-block inserted.ro={obs.blk_ro}, expected {exp.ro['n0']}")
    return out


def check(exp: Expect, obs: Observed, *, what: str, build: str) -> None:
    """Fail with expected-vs-actual and the rule if *obs* does not match *exp*."""
    problems = mismatches(exp, obs)
    if problems:
        raise AssertionError(
            f"{what} [build {build}]: " + "; ".join(problems) + "\n"
            f"  expected: {exp.describe()}\n"
            f"  because:  {exp.because}\n"
            f"  QEMU did: {obs.describe()}")
