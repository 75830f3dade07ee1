"""A qcow2 backing chain base <- mid <- top on one storage, opened node by node.

The chain comes from the ``chain`` recipe (each layer writes its own 64k
pattern) and lives in one storage directory, so on ``erofs``/``eacces``
storage every layer refuses writes. QEMU gets it with ``-blockdev`` the way
libvirt does (iotest 247): a file node per layer with
``auto-read-only=on``, a qcow2 node per layer, backing links by node name,
the backing formats ``read-only=on``::

    top-fmt (qcow2) -> top-file      top-fmt.backing = mid-fmt
    mid-fmt (qcow2) -> mid-file      mid-fmt.backing = base-fmt
    base-fmt (qcow2) -> base-file

Block jobs then have to reopen a read-only layer read-write themselves.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..qemu.tools import QemuIoResult
from ..storage.images import Image, ImageFactory, Pattern, Tools
from ..storage.local import unavailable_reason
from .drive import image_locks, other_process
from .drive import state as _state
from .outcome import Outcome
from .steps import LAYERS, NODES, QEMU_IMG_INFO, QEMU_IMG_INFO_U, Chain

__all__ = ["LAYERS", "NODES", "Chain", "backing_file", "blockdev_args", "block_jobs", "make_chain",
           "read_pattern", "state"]

if TYPE_CHECKING:
    from ..backends.provisioner import Provisioner
    from ..qemu.instance import QemuInstance
    from ..qemu.qmp import QmpError

def make_chain(targets: Provisioner, tools: Tools, storage_kind: str) -> Chain:
    """Create the ``chain`` recipe on *storage_kind* storage; skips if the host cannot."""
    import pytest

    reason = unavailable_reason(storage_kind)
    if reason:
        pytest.skip(reason)
    st = targets.storage(storage_kind)
    top = ImageFactory(tools, st.directory).from_recipe("chain")
    if storage_kind != "rw":
        st.make_readonly()  # eacces: chmod 0444 the files just created
    return Chain(st, dict(zip(LAYERS, reversed(top.chain()), strict=False)))


def blockdev_args(chain: Chain, *, top_ro: bool, base_file: Mapping[str, Any] | None = None) -> list[str]:
    """``-blockdev`` arguments for the chain; *base_file* overrides base-file's options."""
    args: list[str] = []
    below = None
    for layer in LAYERS:
        file = {"driver": "file", "node-name": f"{layer}-file", "filename": str(chain.path(layer)),
                "auto-read-only": True}
        if layer == "base" and base_file:
            file.update(base_file)
        fmt: dict[str, Any] = {"driver": "qcow2", "node-name": f"{layer}-fmt", "file": f"{layer}-file",
                               "read-only": top_ro if layer == "top" else True}
        if below is not None:
            fmt["backing"] = below
        args += ["-blockdev", json.dumps(file), "-blockdev", json.dumps(fmt)]
        below = f"{layer}-fmt"
    return args


def state(vm: QemuInstance, chain: Chain, err: QmpError | None = None) -> Outcome:
    """ro of the six named nodes, QEMU's fd mode and its lock ranges per layer image."""
    paths = dict(chain.qemu_paths())
    out = _state(vm, NODES, paths, err)
    out.locks = {layer: image_locks(vm, path, layer) for layer, path in paths.items()}
    return out


def state_and_others(vm: QemuInstance, chain: Chain, tools: Tools, before: Outcome | None,
                     err: QmpError | None = None) -> Outcome:
    """:func:`state`, plus ``qemu-img info`` (no -U, through the storage's wrapper) of each
    layer whose locks differ from *before* (every layer if None) as ``others``, and where QEMU's
    locks refuse it, ``qemu-img info -U`` too (force-share gets past them): a second process
    costs ~15 ms, the lock ranges nothing. (info opens one layer alone, BDRV_O_NO_BACKING; a
    qemu-io would open the layers below as well.)"""
    got = state(vm, chain, err)
    prefix = chain.storage.wrapper.prefix
    for layer, path in chain.qemu_paths().items():
        if before is None or before.locks.get(layer) != got.locks[layer]:
            refusal = other_process(tools, QEMU_IMG_INFO, "qcow2", path, prefix)
            got.others[f"{QEMU_IMG_INFO} {layer}"] = refusal
            if refusal:
                got.others[f"{QEMU_IMG_INFO_U} {layer}"] = other_process(
                    tools, QEMU_IMG_INFO_U, "qcow2", path, prefix)
    return got


def block_jobs(vm: QemuInstance) -> list[tuple[str, str]]:
    """(job id, status) of every block job QEMU still has."""
    return [(j["device"], j["status"]) for j in vm.execute("query-block-jobs")]


def read_pattern(tools: Tools, image: Image, pattern: Pattern) -> QemuIoResult:
    """``qemu-io -r`` *pattern* from *image* through its on-disk backing chain."""
    return ImageFactory(tools, image.path.parent).read(image, pattern)


def backing_file(tools: Tools, image: Image) -> str | None:
    """The backing file name recorded in *image*'s header (None: no backing file)."""
    return tools.info(image.path).get("backing-filename")
