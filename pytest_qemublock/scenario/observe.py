"""Opening a node through each interface, observing the result, comparing it.

The four interfaces QEMU offers for the same node are driven the same way:
``-blockdev`` (JSON), ``-drive`` (QemuOpts, commas escaped), QMP
``blockdev-add`` and ``qemu-storage-daemon --blockdev``. What QEMU did is an
:class:`Observed`; :func:`check` compares it with an
:class:`~pytest_qemublock.expectations.Expect` and fails with both side by side.
"""
from __future__ import annotations

import dataclasses as _dataclasses
import json
import re
import time as _time
from pathlib import Path as _Path
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..host import procfs as hostfacts
from ..backends.base import Target
from ..qemu.instance import LaunchError
from ..expectations import Expect
from .compare import ro_mismatches
from ..qemu.factory import QemuFactory
from ..storage.images import Pattern as _Pattern
from ..storage.images import Tools as _Tools
from ..qemu.instance import QemuInstance


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
    out += ro_mismatches(exp.ro, obs.ro)
    if exp.fd is not None and obs.fd != [exp.fd]:
        out.append(f"fd modes {obs.fd or 'none'}, expected one {exp.fd} fd")
    if obs.blk_ro is not None and "n0" in exp.ro and obs.blk_ro != exp.ro["n0"]:
        out.append(f"query-block inserted.ro={obs.blk_ro}, expected {exp.ro['n0']}")
    return out


def assert_untouched(qemu: QemuFactory, target: Target, what: str, why: str = "") -> None:
    """Stop the test's QEMUs (a crash fails here) and prove *target*'s image is bit-identical."""
    problems = qemu.shutdown_all()
    assert not problems, "\n".join(problems)
    _assert_image_unchanged(target, what, why)


def _assert_image_unchanged(target: Target, what: str, why: str) -> None:
    assert target.image.unchanged(), (
        f"{what}: {target.image.path} changed on {target.describe()}" + (f" {why}" if why else ""))


def assert_released(vm: QemuInstance, target: Target, what: str, why: str = "") -> None:
    """``blockdev-del`` the node ``n0`` (if it opened) from a QEMU that keeps running, and
    prove QEMU let go of everything: no node left, no fd on the image; and, for
    storage that refuses writes, the image bit-identical."""
    nodes = vm.nodes()
    if "n0" in nodes:
        vm.execute("blockdev-del", {"node-name": "n0"})
        nodes = vm.nodes()
    assert not nodes, f"{what}: blockdev-del n0 left nodes {sorted(nodes)} in {vm.name}"
    if target.fd_path is not None:
        fds = hostfacts.fd_modes(vm.pid, target.fd_path)
        assert not fds, f"{what}: after blockdev-del n0, {vm.name} still has {fds} on {target.fd_path}"
    if target.readonly:
        _assert_image_unchanged(target, what, why)


def check(exp: Expect, obs: Observed, *, what: str, build: str) -> None:
    """Fail with expected-vs-actual and the rule if *obs* does not match *exp*."""
    problems = mismatches(exp, obs)
    if problems:
        raise AssertionError(
            f"{what} [build {build}]: " + "; ".join(problems) + "\n"
            f"  expected: {exp.describe()}\n"
            f"  because:  {exp.because}\n"
            f"  QEMU did: {obs.describe()}")


# -- steps after the open: reopen, writers, readers (degrade / reopen suites) -------



@dataclass
class Attempt(Observed):
    """The outcome of a step on an open node (a reopen, a writer attaching).

    ``opened`` means "the step succeeded". ``ro``/``fd`` are the node's state
    *after* the step, also when it was refused, so a suite can check that a
    refused step left the node as it was (:func:`state_of`).
    """

    step: str = ""
    detail: str = ""  # extra output worth showing (e.g. what qemu-io printed)

    def describe(self) -> str:
        state = ", ".join([f"{n}.ro={v}" for n, v in sorted(self.ro.items())]
                          + ([f"fd={','.join(self.fd)}"] if self.fd else []))
        if not self.opened:
            text = f"error: {self.error.strip()}"
            return text + (f"; node after: {state}" if state else "")
        text = "succeeded" + (f", {state}" if state else "")
        return text + (f" ({self.detail.strip()})" if self.detail.strip() else "")


def state_of(obs: Observed) -> Observed:
    """The node state an :class:`Attempt` left behind, as a plain open :class:`Observed`."""
    return Observed(obs.interface, True, ro=dict(obs.ro), fd=list(obs.fd), blk_ro=obs.blk_ro, vm=obs.vm)


def check_step(exp: Expect, obs: Observed, *, what: str, build: str) -> None:
    """:func:`check` for steps that are not opens: says "succeeded"/"failed"."""
    words = {"opened": "succeeded", "failed to open": "failed"}
    problems = [words.get(p, p) for p in mismatches(exp, obs)]
    if problems:
        expected = exp.describe().replace("opens, ", "succeeds, ", 1) if exp.opens else exp.describe()
        if exp.opens and not exp.ro and exp.fd is None:
            expected = "succeeds"
        raise AssertionError(
            f"{what} [build {build}]: " + "; ".join(problems) + "\n"
            f"  expected: {expected}\n"
            f"  because:  {exp.because}\n"
            f"  QEMU did: {obs.describe()}")


def reopen_node(vm: QemuInstance, opts: Mapping[str, Any], target: Target, *,
                interface: str = "qmp", command: str = "blockdev-reopen") -> Attempt:
    """``blockdev-reopen`` one node with *opts* (its complete options: left-out ones reset
    to their defaults) and observe it afterwards, whether the reopen was refused or not."""
    err = vm.execute_error(command, {"options": [dict(opts)]})
    after = observe(vm, interface, target)
    return Attempt(interface, err is None, f"[{err.error_class}] {err.desc}" if err else "",
                   ro=after.ro, fd=after.fd, blk_ro=after.blk_ro, vm=vm, step=command)


@dataclass
class QemuIoResult:
    """One qemu-io command run through HMP."""

    node: str
    command: str
    reply: str  # the HMP reply: qemu-io's errors (error_report) come back here
    output: str  # what qemu-io printed on QEMU's stdout meanwhile (results, mismatches)

    @property
    def failed(self) -> bool:
        """The command did not run (e.g. its permissions were refused)."""
        return bool(self.reply.strip()) or bool(_IO_FAILED.search(self.output))

    @property
    def pattern_ok(self) -> bool:
        """A ``read -P`` ran and every byte matched."""
        return (not self.failed and "Pattern verification failed" not in self.output
                and _IO_DONE.search(self.output) is not None)

    def describe(self) -> str:
        parts = []
        if self.reply.strip():
            parts.append(f"HMP reply: {self.reply.strip()!r}")
        parts.append(f"stdout: {self.output.strip()!r}" if self.output.strip() else "no output on stdout")
        return "; ".join(parts)


_IO_DONE = re.compile(r"^(read|wrote) \d+/\d+ bytes at offset \d+", re.M)
_IO_FAILED = re.compile(r"^\w+ failed: ", re.M)


def hmp_qemu_io(vm: QemuInstance, node: str, command: str, *, wait: float = 2.0) -> QemuIoResult:
    """Run ``qemu-io NODE "COMMAND"`` through HMP (``human-monitor-command``).

    HMP's qemu-io attaches a temporary BlockBackend to *node* and raises its
    permissions per command (qemu-io-cmds.c ``command()``), so a ``write`` is
    a real writer attaching, and leaving again afterwards. Errors such as a
    refused permission come back in the HMP reply; results ("read 512/512
    bytes", "Pattern verification failed") go to QEMU's stdout, which the
    harness logs to a file: the part written during the command is returned
    (waiting up to *wait* s, scaled, for the result line).
    """
    if vm.kind == "qsd":
        raise ValueError(f"{vm.name}: qemu-storage-daemon has no HMP (human-monitor-command)")
    if '"' in command:
        raise ValueError(f"qemu-io command must not contain '\"': {command!r}")
    path = vm.proc.stdout_path
    start = path.stat().st_size if path.exists() else 0
    reply = vm.execute("human-monitor-command", {"command-line": f'qemu-io {node} "{command}"'})
    deadline = _time.monotonic() + wait * vm.timeouts.factor
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(start)
                output = f.read().decode("utf-8", "replace")
        except OSError:
            output = ""
        if (str(reply).strip() or _IO_DONE.search(output) or _IO_FAILED.search(output)
                or _time.monotonic() >= deadline):
            break
        _time.sleep(0.01)
    return QemuIoResult(node, command, str(reply).strip(), output)


def qemu_io_write(vm: QemuInstance, node: str, pattern: _Pattern, target: Target,
                  *, interface: str = "qmp") -> Attempt:
    """A writer attaching through HMP qemu-io: ``write -P``; the node observed afterwards."""
    res = hmp_qemu_io(vm, node, f"write {pattern.io_args()}")
    after = observe(vm, interface, target)
    return Attempt(interface, not res.failed and _IO_DONE.search(res.output) is not None,
                   res.reply or res.output, ro=after.ro, fd=after.fd, blk_ro=after.blk_ro, vm=vm,
                   step="hmp qemu-io write", detail=res.output if not res.failed else "")


def nbd_server_start(vm: QemuInstance, sock: _Path) -> None:
    """``nbd-server-start`` on a unix socket (its directory must be writable for QEMU's uid)."""
    vm.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(sock)}}})


def export_writer(vm: QemuInstance, node: str, name: str, target: Target,
                  *, interface: str = "qmp") -> Attempt:
    """A writer attaching as ``block-export-add type=nbd writable=true``; the node afterwards."""
    err = vm.execute_error("block-export-add", {"type": "nbd", "id": name, "node-name": node,
                                                "name": name, "writable": True})
    after = observe(vm, interface, target)
    return Attempt(interface, err is None, f"[{err.error_class}] {err.desc}" if err else "",
                   ro=after.ro, fd=after.fd, blk_ro=after.blk_ro, vm=vm,
                   step="block-export-add writable=true")


def read_export(vm: QemuInstance, tools: _Tools, sock: _Path, node: str, name: str,
                pattern: _Pattern) -> tuple[bool, str]:
    """Export *node* read-only over NBD and ``read -P`` *pattern* through it with the
    build's qemu-io. Returns (every byte matched, what happened)."""
    err = vm.execute_error("block-export-add", {"type": "nbd", "id": name, "node-name": node,
                                                "name": name, "writable": False})
    if err is not None:
        return False, f"block-export-add {name} writable=false failed: [{err.error_class}] {err.desc}"
    spec = ("driver=raw,file.driver=nbd,file.server.type=unix,"
            f"file.server.path={qemu_opt_escape(str(sock))},file.export={name}")
    res = tools.io("-r", "--image-opts", "-c", f"read {pattern.io_args()}", spec, check=False)
    text = (res.stdout + res.stderr).strip()
    ok = res.returncode == 0 and "Pattern verification failed" not in text and bool(_IO_DONE.search(text))
    return ok, (f"qemu-io -r --image-opts {spec} -c 'read {pattern.io_args()}' -> exit {res.returncode}: "
                f"{text}")


def with_because(exp: Expect, because: str) -> Expect:
    """*exp* with another reason (e.g. "a refused step leaves the node as it was")."""
    return _dataclasses.replace(exp, because=because)


def add_node(vm: QemuInstance, opts: Mapping[str, Any], target: Target, *,
             interface: str = "qmp") -> Observed:
    """``blockdev-add`` *opts* into a QEMU that already runs; observed like :func:`open_node`."""
    err = vm.execute_error("blockdev-add", dict(opts))
    if err is not None:
        return Observed(interface, False, f"[{err.error_class}] {err.desc}", vm=vm)
    return observe(vm, interface, target)
