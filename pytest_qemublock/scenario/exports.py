"""What an NBD client sees of an export: its flags and a second process's open.

``qmp_export`` exports a node of a running QEMU through ``nbd-server-add`` or
``block-export-add`` (the writability option left out or given) on a pre-bound
socket; ``client_view`` lists the export's flags (``qemu-nbd -L``) and opens it
from a second process, read-write and read-only (``drive.other_process``).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..host.listeners import Listener
from ..qemu.instance import QemuInstance
from ..qemu.qmp import QmpError
from ..qemu.tools import Tools
from .drive import nbd_export_flags, other_process
from .steps import QEMU_IO_RO, QEMU_IO_RW


@dataclass
class ClientView:
    """The export at *url* as a client sees it."""

    url: str
    flags: list[str]  # flag words of qemu-nbd -L ("readonly", "trim", ...)
    others: dict[str, str] = field(default_factory=dict)  # probe -> its message, "" if it opened

    @property
    def writable(self) -> bool:
        return "readonly" not in self.flags

    def mismatches(self, flags: Mapping[str, bool], others: Mapping[str, str]) -> list[str]:
        """How this view differs from the expected flag words (listed or not) and probes."""
        out = [f"{f} {'listed' if f in self.flags else 'not listed'}, expected it "
               f"{'listed' if listed else 'absent'}" for f, listed in flags.items()
               if (f in self.flags) is not listed]
        out += [f"{p} {'refused: ' + repr(got) if got else 'opened it'}, expected "
                f"{'refusal ' + repr(others[p]) if others[p] else 'it to open it'}"
                for p, got in self.others.items() if got != others.get(p)]
        return out


def client_view(tools: Tools, socket_path: str | Path, export: str = "e0") -> ClientView:
    url = f"nbd+unix:///{export}?socket={socket_path}"
    others = {p: other_process(tools, p, "raw", url) for p in (QEMU_IO_RW, QEMU_IO_RO)}
    return ClientView(url, nbd_export_flags(tools, socket_path), others)


def qmp_export(vm: QemuInstance, command: str, writable: bool | None, sockdir: Path, tools: Tools,
               node: str = "n0") -> QmpError | ClientView:
    """Export *node* as ``e0`` with *command* (writable None: left out); the refusal, or what
    a client sees."""
    listener = Listener("unix", sockdir, "exp")
    try:
        vm.qmp.pass_fd(listener.fd, "nbdlisten")
        vm.execute("nbd-server-start", {"addr": {"type": "fd", "data": {"str": "nbdlisten"}}})
        args: dict[str, str | bool] = ({"type": "nbd", "id": "e0", "node-name": node, "name": "e0"}
                                       if command == "block-export-add" else {"device": node, "name": "e0"})
        if writable is not None:
            args["writable"] = writable
        err = vm.execute_error(command, args)
        if err is not None:
            return err
        assert listener.path is not None  # a unix listener has one
        return client_view(tools, listener.path)
    finally:
        listener.close()
