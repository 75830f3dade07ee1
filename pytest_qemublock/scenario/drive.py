"""Drivers of QEMU: open a node through each interface, reopen it, attach writers, read.

The four interfaces QEMU offers for the same node are driven the same way:
``-blockdev`` (JSON), ``-drive`` (QemuOpts, commas escaped), QMP
``blockdev-add`` and ``qemu-storage-daemon --blockdev``. Every driver returns
an :class:`~pytest_qemublock.scenario.outcome.Outcome`: what QEMU did and the
node's state afterwards (``ro`` per node, fd modes on the image as ``image``).
"""
from __future__ import annotations

import json
import time as _time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..backends.base import Target
from ..host import procfs
from ..host.process import describe_status
from ..qemu.factory import QemuFactory
from ..qemu.instance import LaunchError, QemuInstance
from ..qemu.qmp import QmpError
from ..qemu.tools import IO_DONE, IO_FAILED, QemuIoResult, Tools
from ..storage.images import Pattern
from .outcome import IMAGE, Outcome, startup_message, tool_message
from .steps import QEMU_IMG_INFO, QEMU_IMG_INFO_U, QEMU_IO_RO, QEMU_IO_RO_U, QEMU_IO_RW


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


def launch_failed(e: LaunchError) -> Outcome:
    """A QEMU that refused to start: its message without the ``<prog>: <option> <arg>: `` prefix."""
    return Outcome(False, startup_message(e.stderr, e.argv) if e.stderr.strip() else str(e))


def qmp_failed(err: QmpError, vm: QemuInstance | None = None) -> Outcome:
    return Outcome(False, err.desc, err.error_class, vm=vm)


def state(vm: QemuInstance, nodes: Iterable[str], images: Mapping[str, Path | None],
          err: QmpError | None = None, detail: str = "",
          named: Mapping[str, Any] | None = None) -> Outcome:
    """The outcome of a QMP step that returned *err* (None: success): ``ro`` of *nodes*
    (query-named-block-nodes, unless the caller has just asked: *named*; None if
    missing) and the modes of QEMU's fds per image."""
    if named is None:
        named = vm.nodes()
    ro = {n: (bool(named[n]["ro"]) if n in named else None) for n in nodes}
    fds = {label: procfs.fd_modes(vm.pid, path) for label, path in images.items() if path is not None}
    for label, modes in fds.items():
        vm.qmp.transcript.note("fds", label=label, path=images[label], value=" ".join(modes) or "none")
    return Outcome(err is None, err.desc if err else "", err.error_class if err else "", ro, fds,
                   detail=detail, vm=vm)


def image_locks(vm: QemuInstance, path: str | Path | None, label: str = IMAGE) -> list[str]:
    """The lock ranges ("100-101") QEMU holds through its fds for the image at *path* (as
    QEMU sees it), from their fdinfo: only QEMU's own locks, every fd's (a second fd
    holding locks shows as repeated ranges); [] without an fd."""
    files = procfs.open_files(vm.pid, str(path)) if path is not None else []
    locks = [lk for f in files for lk in procfs.fd_locks(vm.pid, f.fd)]
    out = []
    for lk in sorted(locks, key=lambda lk: lk.start):
        end = "EOF" if lk.end is None else lk.end
        text = f"{lk.start}" if lk.start == lk.end else f"{lk.start}-{end}"
        out.append(text + ("" if lk.access == "READ" else f":{lk.access}"))
    if path is not None:
        vm.qmp.transcript.note("locks", label=label, path=path, value=" ".join(out) or "none")
    return out


#: the second-process probes (steps.PROBES) as command lines: (tool role, options before the image)
_PROBE_ARGS = {
    QEMU_IO_RW: ("io", ("-c", "quit")),
    QEMU_IO_RO: ("io", ("-r", "-c", "quit")),
    QEMU_IO_RO_U: ("io", ("-r", "-U", "-c", "quit")),
    QEMU_IMG_INFO: ("img", ("info",)),
    QEMU_IMG_INFO_U: ("img", ("info", "-U")),
}


def other_process(tools: Tools, probe: str, fmt: str, path: str | Path, prefix: tuple[str, ...] = ()
                  ) -> str:
    """Open the image at *path* from a second process (*probe*, one of steps.PROBES: e.g.
    ``qemu-io rw`` is ``qemu-io -c quit``, ``qemu-img info -U`` force-shares); its message
    without the program prefix, "" if it opened the image. *prefix*: the wrapper QEMU runs in
    (its view of the path, its uid)."""
    if probe not in _PROBE_ARGS:
        raise ValueError(f"unknown second-process probe {probe!r}")
    role, opts = _PROBE_ARGS[probe]
    res = tools.run(role, *opts, "-f", fmt, path, check=False, prefix=prefix)
    return "" if res.returncode == 0 else tool_message(res.stderr, f"qemu-{role}")


def observe(vm: QemuInstance, interface: str, target: Target, err: QmpError | None = None,
            detail: str = "") -> Outcome:
    """The state of *target*'s nodes in *vm* (every named node), after a step that
    returned *err*; for ``-drive`` also query-block's ``ro`` of drive ``d0``."""
    named = vm.nodes()
    nodes = [name for name in named if not name.startswith("#")]
    out = state(vm, nodes, {IMAGE: target.fd_path}, err, detail, named)
    if interface == "drive":
        for blk in vm.execute("query-block"):
            if blk.get("device") == "d0" and "inserted" in blk:
                out.blk_ro = bool(blk["inserted"]["ro"])
    return out


def open_node(qemu: QemuFactory, interface: str, opts: Mapping[str, Any], target: Target,
              *, machine: str = "none") -> Outcome:
    """Open the node *opts* (node-name ``n0``) through *interface* and observe it."""
    try:
        if interface == "blockdev":
            vm = qemu.start("-blockdev", json.dumps(opts), machine=machine, wrapper=target.wrapper)
        elif interface == "drive":
            vm = qemu.start("-drive", drive_arg(opts), machine=machine, wrapper=target.wrapper)
        elif interface == "qsd":
            vm = qemu.start_qsd("--blockdev", json.dumps(opts), wrapper=target.wrapper)
        elif interface == "qmp":
            vm = qemu.start(machine=machine, wrapper=target.wrapper)
            return add_node(vm, opts, target)
        else:
            raise ValueError(f"unknown interface {interface!r}")
    except LaunchError as e:
        return launch_failed(e)
    return observe(vm, interface, target)


def add_node(vm: QemuInstance, opts: Mapping[str, Any], target: Target, *,
             interface: str = "qmp") -> Outcome:
    """``blockdev-add`` *opts* into a QEMU that already runs; observed like :func:`open_node`
    (a refused one: only the error)."""
    err = vm.execute_error("blockdev-add", dict(opts))
    if err is not None:
        return qmp_failed(err, vm)
    return observe(vm, interface, target)


def reopen_node(vm: QemuInstance, opts: Mapping[str, Any], target: Target, *,
                interface: str = "qmp", command: str = "blockdev-reopen") -> Outcome:
    """``blockdev-reopen`` one node with *opts* (its complete options: left-out ones reset
    to their defaults) and observe it afterwards, whether the reopen was refused or not."""
    return observe(vm, interface, target, vm.execute_error(command, {"options": [dict(opts)]}))


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
    hmp = f'qemu-io {node} "{command}"'
    reply = vm.execute("human-monitor-command", {"command-line": hmp})
    deadline = _time.monotonic() + wait * vm.timeouts.factor
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(start)
                output = f.read().decode("utf-8", "replace")
        except OSError:
            output = ""
        if (str(reply).strip() or IO_DONE.search(output) or IO_FAILED.search(output)
                or _time.monotonic() >= deadline):
            break
        _time.sleep(0.01)
    return QemuIoResult(command, str(reply).strip(), output, f"HMP {hmp}")


def qemu_io_write(vm: QemuInstance, node: str, pattern: Pattern, target: Target,
                  *, interface: str = "qmp") -> Outcome:
    """A writer attaching through HMP qemu-io: ``write -P``; the node observed afterwards.
    A refusal's message is qemu-io's error (the HMP reply), or what it printed."""
    res = hmp_qemu_io(vm, node, f"write {pattern.io_args()}")
    out = observe(vm, interface, target, detail=res.output if res.done else "")
    out.ok = res.done
    if not res.done:
        out.error = res.reply.strip() or res.output.strip()
    return out


def nbd_export_flags(tools: Tools, socket_path: str | Path) -> list[str]:
    """The flag words ``qemu-nbd -L`` lists for the one export of the server at *socket_path*
    (nbd/client.c: NBD_FLAG_* names, e.g. "readonly" for NBD_FLAG_READ_ONLY)."""
    res = tools.run("nbd", "-L", "-k", socket_path, check=False)
    lines = [line.strip() for line in res.stdout.splitlines() if line.strip().startswith("flags:")]
    if res.returncode != 0 or len(lines) != 1:
        raise AssertionError(f"qemu-nbd -L -k {socket_path} did not list one export: exit "
                             f"{res.returncode}\n{res.stdout}{res.stderr}")
    return lines[0].partition("(")[2].rstrip(")").split()


def nbd_server_start(vm: QemuInstance, sock: Path) -> None:
    """``nbd-server-start`` on a unix socket (its directory must be writable for QEMU's uid)."""
    vm.execute("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(sock)}}})


def export_writer(vm: QemuInstance, node: str, name: str, target: Target,
                  *, interface: str = "qmp") -> Outcome:
    """A writer attaching as ``block-export-add type=nbd writable=true``; the node afterwards."""
    err = vm.execute_error("block-export-add", {"type": "nbd", "id": name, "node-name": node,
                                                "name": name, "writable": True})
    return observe(vm, interface, target, err)


def read_export(vm: QemuInstance, tools: Tools, sock: Path, node: str, name: str,
                pattern: Pattern) -> QemuIoResult:
    """Export *node* read-only over NBD and ``read -P`` *pattern* through it with the
    build's qemu-io (a refused export: a result that failed, naming the error)."""
    err = vm.execute_error("block-export-add", {"type": "nbd", "id": name, "node-name": node,
                                                "name": name, "writable": False})
    command = f"read {pattern.io_args()}"
    if err is not None:
        return QemuIoResult(command, f"[{err.error_class}] {err.desc}", "",
                            f"block-export-add {name} writable=false")
    spec = ("driver=raw,file.driver=nbd,file.server.type=unix,"
            f"file.server.path={qemu_opt_escape(str(sock))},file.export={name}")
    return tools.io_command(command, "-r", "--image-opts", spec)


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
        fds = procfs.fd_modes(vm.pid, target.fd_path)
        assert not fds, f"{what}: after blockdev-del n0, {vm.name} still has {fds} on {target.fd_path}"
    if target.readonly:
        _assert_image_unchanged(target, what, why)


def died(qemu: QemuFactory, vm: QemuInstance) -> Outcome:
    """*vm* died during a step (maybe the expected outcome: a known abort): reap it
    and take it from the test's QEMUs, so that the ``qemu`` fixture's teardown does not
    report the same death again, and say how it died."""
    vm.proc.wait_exit(vm.timeouts.shutdown)
    got = Outcome(False, died=describe_status(vm.proc.returncode), stderr=vm.proc.stderr_text(4000))
    vm.proc.stop()  # reaped now, it leaves the registry by itself
    qemu.instances.remove(vm)
    return got
