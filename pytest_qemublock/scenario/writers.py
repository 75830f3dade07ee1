"""Users of a node that come and go: NBD exports and SCSI/virtio devices.

A :class:`WriterBench` is one QEMU (the arch's device machine, ``-M pc`` or
``-M virt``, a virtio-scsi-pci bus, an NBD server; :mod:`..qemu.arch`) holding
the node pair the dynamic scenario is about::

    fmt0 (raw or qcow2)  ->  f0 (file, auto-read-only=on, on the target's storage)

and runs steps on it: users attach to ``fmt0`` and leave, ``f0`` is reopened,
the storage is flipped, a read-only export is read back. Each step returns a
:class:`~pytest_qemublock.scenario.outcome.Outcome` with ``f0``/``fmt0``'s ``ro``
the access mode of QEMU's fd for the image and the locks QEMU holds through
it (``/proc/locks``), observed *after* the step (and after its completion
event, for detaches). :meth:`WriterBench.others` opens the image from a second
process (qemu-io, qemu-img) to see what QEMU's locks let it do.

The NBD server gets its listening socket from us (:class:`Listener` +
``getfd``), because an EACCES-storage QEMU runs as uid 65534 and could not
create a socket in the plugin's private socket directory.
"""
from __future__ import annotations

import json
from typing import Any

from ..backends.base import Target
from ..host.listeners import Listener
from ..qemu.factory import QemuFactory
from ..qemu.instance import QemuInstance
from ..qemu.qmp import QmpError
from ..qemu.tools import Tools
from .drive import image_locks, other_process
from .drive import state as _state
from .outcome import IMAGE, Outcome
from .steps import (
    EXPORT,
    EXPORT_RO,
    FILE_NODE,
    FMT_NODE,
    KINDS,
    NBD_ADD,
    SCSI_CD,
    SCSI_HD,
    VIRTIO_BLK,
    Attach,
    Detach,
    Flip,
    ReadExport,
    Reopen,
    Step,
    User,
    export,
    export_ro,
    nbd_add,
    scsi_cd,
    scsi_hd,
    virtio_blk,
)

__all__ = ["EXPORT", "EXPORT_RO", "FILE_NODE", "FMT_NODE", "KINDS", "NBD_ADD", "SCSI_CD", "SCSI_HD",
           "VIRTIO_BLK",
           "Attach", "Detach", "Flip", "ReadExport", "Reopen", "Step", "User", "WriterBench", "export",
           "export_ro", "nbd_add", "scsi_cd", "scsi_hd", "virtio_blk"]

class WriterBench:
    """One QEMU with fmt0 -> f0 (auto-read-only=on) and the means to add and remove users."""

    def __init__(self, qemu: QemuFactory, target: Target, tools: Tools, sockdir: Any, fmt: str = "raw"
                 ) -> None:
        if target.fd_path is None:
            raise ValueError(f"{target.describe()}: the writer bench needs a file backend")
        self.target = target
        self.tools = tools
        self.f0 = target.node(FILE_NODE, **{"auto-read-only": True})
        self.fmt = fmt
        self.fmt0 = {"driver": fmt, "node-name": FMT_NODE, "file": FILE_NODE}
        self.arch = qemu.build.arch
        self.vm: QemuInstance = qemu.start(
            "-blockdev", json.dumps(self.f0), "-blockdev", json.dumps(self.fmt0),
            *self.arch.device_args(), machine=self.arch.device_machine, wrapper=target.wrapper)
        self.listener = Listener("unix", sockdir, "dyn")
        try:
            self.vm.qmp.pass_fd(self.listener.fd, "nbdlisten")
            self.vm.execute("nbd-server-start", {"addr": {"type": "fd", "data": {"str": "nbdlisten"}}})
        except BaseException:
            self.listener.close()
            raise
        self.attached: dict[str, User] = {}

    def describe(self) -> str:
        return (f"{FMT_NODE} {self.fmt} over {FILE_NODE} file auto-read-only=on, "
                f"{self.target.describe()} ({self.target.fd_path})")

    def state(self, err: QmpError | None = None, detail: str = "") -> Outcome:
        out = _state(self.vm, (FILE_NODE, FMT_NODE), {IMAGE: self.target.fd_path}, err, detail)
        out.locks[IMAGE] = image_locks(self.vm, self.target.fd_path)
        return out

    def others(self, probes: list[str]) -> dict[str, str]:
        """Open the image from a second process per probe (drive.other_process), as QEMU
        sees it (its wrapper): its message, "" if it opened the image."""
        path = str(self.target.fd_path)
        return {p: other_process(self.tools, p, self.fmt, path, self.target.wrapper.prefix) for p in probes}

    # -- steps ---------------------------------------------------------------------------
    def run(self, step: Step) -> Outcome:
        if isinstance(step, Attach):
            return self.attach(step.user)
        if isinstance(step, Detach):
            return self.detach(step.id)
        if isinstance(step, Reopen):
            opts = self.target.node(FILE_NODE, **{"read-only": step.ro, "auto-read-only": step.aro})
            return self.state(self.vm.execute_error("blockdev-reopen", {"options": [opts]}))
        if isinstance(step, ReadExport):
            return self.read(step.id)
        if isinstance(step, Flip):
            (self.target.make_writable if step.writable else self.target.make_readonly)()
            return self.state()
        raise TypeError(f"unknown step {step!r}")

    def attach(self, user: User) -> Outcome:
        if user.kind in (EXPORT, EXPORT_RO):
            err = self.vm.execute_error("block-export-add", {
                "type": "nbd", "id": user.id, "name": user.id, "node-name": FMT_NODE,
                "writable": user.kind == EXPORT})
        elif user.kind == NBD_ADD:
            err = self.vm.execute_error("nbd-server-add", {"device": FMT_NODE, "name": user.id,
                                                           "writable": True})
        else:
            args: dict[str, Any] = {"driver": {SCSI_HD: "scsi-hd", SCSI_CD: "scsi-cd",
                                               VIRTIO_BLK: self.arch.virtio_blk}[user.kind],
                                    "id": user.id, "drive": FMT_NODE}
            if user.kind != VIRTIO_BLK:
                args["bus"] = "scsi0.0"
            elif self.arch.hotplug_bus:
                args["bus"] = self.arch.hotplug_bus
            if user.share_rw:
                args["share-rw"] = True
            err = self.vm.execute_error("device_add", args)
        if err is None:
            self.attached[user.id] = user
        return self.state(err)

    def detach(self, id: str) -> Outcome:
        """Remove user *id* and wait (with a timeout) until QEMU says it is gone."""
        user = self.attached.get(id)
        if user is None:
            raise ValueError(f"detach {id}: not attached (attached: {sorted(self.attached)})")
        if user.kind == VIRTIO_BLK:
            raise ValueError(f"{self.arch.virtio_blk} unplug needs a guest: DEVICE_DELETED never comes "
                             "under -S")
        timeout = self.vm.timeouts.event
        if user.is_device:
            err = self.vm.execute_error("device_del", {"id": id})
            if err is None:
                self.vm.wait_event("DEVICE_DELETED", {"device": id}, timeout=timeout)
        else:
            if user.kind == NBD_ADD:
                err = self.vm.execute_error("nbd-server-remove", {"name": id})
            else:
                err = self.vm.execute_error("block-export-del", {"id": id})
            if err is None:
                # nbd-server-add names the export's id after the export name
                self.vm.wait_event("BLOCK_EXPORT_DELETED", {"id": id}, timeout=timeout)
        if err is None:
            del self.attached[id]
        return self.state(err)

    def uri(self, id: str) -> str:
        return f"nbd+unix:///{id}?socket={self.listener.path}"

    def read(self, id: str) -> Outcome:
        """``qemu-io -r`` the first pattern of the image's recipe through export *id*."""
        pattern = self.target.image.patterns[0]
        res = self.tools.io_command(f"read {pattern.io_args()}", "-r", "-f", "raw", self.uri(id))
        state = self.state(detail=res.describe())
        state.ok, state.error = res.pattern_ok, "" if res.pattern_ok else res.output
        return state

    def close(self) -> None:
        self.listener.close()
