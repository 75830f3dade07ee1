"""Expectations of the defaults scenario (suites/test_defaults.py).

Defaults and inheritance: ``-drive`` turns auto-read-only on (blockdev.c
blockdev_init), backing (COW) children open read-only with auto-read-only off
(block.c bdrv_inherited_options), and the tools open their images with a
BlockBackend that asks for WRITE at once, so auto-read-only cannot save them.
Exports are read-only unless asked (BlockExportOptions / NbdServerAddOptions
``writable`` default false) except qemu-nbd's (read-write unless ``-r``); a
child left without read-only or auto-read-only inherits the parent's, a backing
child is read-only with auto-read-only off (block.c bdrv_inherited_options);
the top node's auto-read-only is on for ``-drive`` and off for ``blockdev-add``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..backends.drivers import NBD_RO_EXPORT
from ..qemu.capabilities import Capabilities
from ..scenario.steps import QEMU_IO_RO, QEMU_IO_RW
from .common import NODE_IS_READ_ONLY, O_RDONLY, O_RDWR, Expect, dynamic, image_fd

#: the text of a refused read-write open of a read-only export (a regex that is plain text)
NBD_RO_EXPORT_TEXT = NBD_RO_EXPORT


def expect_classic_drive(fmt: str, readonly_storage: bool, ro: bool, error: str,
                         caps: Capabilities) -> Expect:
    """``-drive file=X,format=FMT,if=none[,read-only=on]``; ``ro`` is ``query-block`` inserted.ro."""
    if ro:
        return Expect(True, ro={"d0": True}, fds=image_fd(O_RDONLY), because="read-only=on")
    if fmt == "qcow2":
        if readonly_storage:
            return Expect(False, error=error, because="-drive's auto-read-only=on reaches the file child, "
                          "but the read-write qcow2 node needs WRITE on it at once "
                          "(block.c bdrv_default_perms_for_storage)")
        return Expect(True, ro={"d0": False}, fds=image_fd(O_RDWR),
                      because="a read-write qcow2 takes WRITE on its file")
    fd = O_RDONLY if dynamic(caps) else O_RDWR
    if readonly_storage and not dynamic(caps):
        return Expect(True, ro={"d0": True}, fds=image_fd(O_RDONLY),
                      because="-drive defaults to auto-read-only=on")
    return Expect(True, ro={"d0": False}, fds=image_fd(fd),
                  because="-drive defaults to auto-read-only=on: raw has no writer yet, so the "
                          "dynamic file node stays O_RDONLY, on any storage")


@dataclass(frozen=True)
class ToolCase:
    """A qemu-img/qemu-io/qemu-nbd command on read-only storage and its expected outcome."""

    name: str
    role: str
    args: tuple[str, ...]  # {p} = raw image path, {q} = qcow2 image path (as the tool sees them)
    ok: bool
    error: str | None = None  # regex; {P} = escaped path of the image used
    because: str = ""


STRERROR = {"erofs": "Read-only file system", "eacces": "Permission denied"}

# Sources: qemu-io.c openfile() puts "can't open device <name>: " (or "can't open: ") and
# qemu-img.c img_open_file() "Could not open '<name>': " before the block layer's error;
# with --image-opts the name is the whole option string. Checked on 7.2 and 10.0.
TOOL_CASES = (
    ToolCase("io-rw", "io", ("-f", "raw", "-c", "read 0 512", "{p}"), False,
             r"can't open device {P}: Could not open '{P}': {E}",
             "qemu-io opens read-write unless -r"),
    ToolCase("io-image-opts-aro", "io",
             ("--image-opts", "-c", "read 0 512",
              "driver=raw,file.driver=file,file.filename={p},file.auto-read-only=on"),
             False, r"can't open: Could not open '{P}': {E}",
             "qemu-io's BlockBackend asks for WRITE at open, so auto-read-only cannot degrade"),
    ToolCase("io-ro", "io", ("-r", "-f", "raw", "-c", "read -P 0x5a 0 512", "{p}"), True,
             because="qemu-io -r opens read-only"),
    ToolCase("io-ro-reopen-w", "io", ("-r", "-f", "raw", "-c", "reopen -w", "-c", "write 0 512", "{p}"),
             False,
             r"Could not open '{P}': {E}\nBlock node is read-only",
             "reopen -w needs the storage to accept writes"),
    ToolCase("img-info", "img", ("info", "{q}"), True, because="qemu-img info opens read-only"),
    ToolCase("img-check", "img", ("check", "{q}"), True, because="qemu-img check opens read-only"),
    ToolCase("img-resize", "img", ("resize", "-f", "raw", "{p}", "2M"), False,
             r"Could not open '{P}': Could not open '{P}': {E}", "resize needs write"),
    ToolCase("img-resize-image-opts-aro", "img",
             ("resize", "--image-opts",
              "driver=raw,file.driver=file,file.filename={p},file.auto-read-only=on", "2M"),
             False,
             r"Could not open 'driver=raw,file\.driver=file,file\.filename={P},file\.auto-read-only=on': "
             r"Could not open '{P}': {E}",
             "auto-read-only does not help a tool that must write"),
    ToolCase("img-snapshot", "img", ("snapshot", "-c", "s1", "{q}"), False,
             r"Could not open '{Q}': Could not open '{Q}': {E}", "snapshot -c writes"),
)


def tool_error(case: ToolCase, p: str, q: str, storage: str) -> str | None:
    if case.error is None:
        return None
    return (case.error.replace("{P}", re.escape(p)).replace("{Q}", re.escape(q))
            .replace("{E}", re.escape(STRERROR[storage])))


# -- who may write through an export, when the option is left out --------------------


@dataclass(frozen=True)
class ExportDefault:
    """One way to export a read-write node, with its writability option given or left out."""

    interface: str  # qemu-nbd | qsd | nbd-server-add | block-export-add
    writable: bool | None  # the option as given (qemu-nbd: -r is writable=False); None: left out
    because: str

    @property
    def id(self) -> str:
        opt = {None: "omitted", True: "writable", False: "read-only"}[self.writable]
        return f"{self.interface}-{opt}"

    @property
    def expect_writable(self) -> bool:
        """Clients may write (no NBD_FLAG_READ_ONLY): only where writable was asked for, or
        for qemu-nbd, whose default is read-write."""
        if self.writable is None:
            return self.interface == "qemu-nbd"
        return self.writable


_BLOCK_EXPORT = ("qapi/block-export.json BlockExportOptions: '*writable', \"(default: false)\"; "
                 "block/export/export.c blk_exp_add: writable = export->has_writable && export->writable")
_NBD_SERVER_ADD = ("qapi/block-export.json NbdServerAddOptions: '*writable', \"(default: false)\"; "
                   "blockdev-nbd.c qmp_nbd_server_add passes it on to the BlockExportOptions")
_QEMU_NBD = ("qemu-nbd.c: readonly starts false, only -r/--read-only sets it; the export gets "
             "writable = !readonly")

EXPORT_DEFAULTS = (
    ExportDefault("qemu-nbd", None, _QEMU_NBD),
    ExportDefault("qemu-nbd", False, _QEMU_NBD),
    ExportDefault("qsd", None, _BLOCK_EXPORT + " (qsd --export parses BlockExportOptions)"),
    ExportDefault("qsd", True, _BLOCK_EXPORT),
    ExportDefault("qsd", False, _BLOCK_EXPORT),
    ExportDefault("nbd-server-add", None, _NBD_SERVER_ADD),
    ExportDefault("nbd-server-add", True, _NBD_SERVER_ADD),
    ExportDefault("nbd-server-add", False, _NBD_SERVER_ADD),
    ExportDefault("block-export-add", None, _BLOCK_EXPORT),
    ExportDefault("block-export-add", True, _BLOCK_EXPORT),
    ExportDefault("block-export-add", False, _BLOCK_EXPORT),
)


#: the flag words (qemu-nbd -L) of an export that only a writable one has
WRITE_FLAGS = ("trim", "zeroes", "fast-zero")
EXPORT_FLAGS_RULE = ("nbd/server.c nbd_export_create: NBD_FLAG_READ_ONLY for a read-only export, "
          "SEND_TRIM | SEND_WRITE_ZEROES | SEND_FAST_ZERO only for a writable one (dbb38caac5)")


def export_flags(writable: bool, max_connections: int | None = None) -> dict[str, bool]:
    """Which of the writability flag words a client sees listed for the export
    (EXPORT_FLAGS_RULE), and "multi" (NBD_FLAG_CAN_MULTI_CONN): nbd/server.c
    nbd_export_create sets it when nbd_server_max_connections() != 1, read-only or not
    (61cc872456, 58a6fdcc9e). *max_connections*: the server's (qemu-nbd -e, --nbd-server
    max-connections); None: nbd-server-start's default (0, no limit, in 7.2; 100 since 9.0)."""
    return {"readonly": not writable, **{w: writable for w in WRITE_FLAGS}, "multi": max_connections != 1}


def client_others(writable: bool, url: str) -> dict[str, str]:
    """What a second process (``qemu-io rw``, ``qemu-io ro``) gets when it opens the export at
    *url*: "" if it opens it. A read-write client of a read-only export is refused at open by
    the nbd driver (block/nbd.c nbd_handle_updated_info -> bdrv_apply_auto_read_only, whose own
    message is lost: known bug nbd-ro-export-message-lost, backends/drivers.py NBD_RO_EXPORT),
    qemu-io.c openfile prefixing "can't open device <url>: "."""
    return {QEMU_IO_RW: "" if writable else f"can't open device {url}: {NBD_RO_EXPORT_TEXT}",
            QEMU_IO_RO: ""}


def expect_read_only_node_export(exp: ExportDefault) -> Expect:
    """A read-only node exported over QMP (*exp*: nbd-server-add or block-export-add, writable
    left out or given): refused, or exported read-only."""
    if exp.interface == "block-export-add" and exp.writable:
        return Expect(False, error=re.escape("Cannot export read-only node as writable"),
                      because="block/export/export.c blk_exp_add: bdrv_is_read_only(bs) && "
                              "export->writable is refused (9b562c646b)")
    if exp.interface == "nbd-server-add" and exp.writable:
        return Expect(True, ro={"n0": True},
                      because="blockdev-nbd.c qmp_nbd_server_add: a read-only node is exported with "
                              "writable=false whatever was asked, silently (9b562c646b); "
                              + EXPORT_FLAGS_RULE)
    return Expect(True, ro={"n0": True}, because=f"{exp.because}; {EXPORT_FLAGS_RULE}")


# -- read-only of a child node, when its own read-only is left out --------------------

#: child roles of a qcow2 node: the option that opens it
CHILD_ROLES = ("file", "backing", "data-file")


def expect_child_read_only(role: str, parent_ro: bool, child_ro: bool | None) -> Expect:
    """``blockdev-add`` qcow2 ``n0`` (read-only=*parent_ro*) with the child *role* given inline
    as node ``c0`` (read-only=*child_ro*, None: left out). ``ok``, and ``ro`` of both nodes.

    block.c bdrv_inherited_options: a COW child (``backing``) gets read-only=on and
    auto-read-only=off unless it says otherwise ("backing files are opened read-only by
    default"); every other child (``file``: primary/metadata, ``data-file``: BDRV_CHILD_DATA,
    block/qcow2.c qcow2_do_open) inherits the parent's read-only unless it sets its own
    (qdict_copy_default). An explicit value always wins.
    """
    given = "left out" if child_ro is None else f"read-only={'on' if child_ro else 'off'}"
    parent = f"qcow2 read-only={'on' if parent_ro else 'off'}"
    if child_ro is None:
        ro = True if role == "backing" else parent_ro
        rule = ("a backing child defaults to read-only=on (bdrv_inherited_options, BDRV_CHILD_COW)"
                if role == "backing" else f"the {role} child inherits the parent's read-only "
                                          "(bdrv_inherited_options, qdict_copy_default)")
    else:
        ro, rule = child_ro, "an explicit read-only wins over the default and the parent's"
    because = f"{parent}, {role} {given}: {rule}"
    if not parent_ro and ro and role == "file":
        # a read-write qcow2 writes its metadata to file at once
        return Expect(False, error=NODE_IS_READ_ONLY,
                      because=f"{because}; a read-write qcow2 takes WRITE on its file child at once "
                              "(block.c bdrv_default_perms_for_storage, BDRV_CHILD_METADATA: 'format "
                              "drivers may touch metadata even if the guest doesn't write'), which a "
                              "read-only node refuses (bdrv_node_refresh_perm)")
    if not parent_ro and ro and role == "data-file":
        because += ("; data-file is a pure BDRV_CHILD_DATA child: it gets WRITE only once a user of "
                    "n0 writes (bdrv_default_perms_for_storage passes the parents' permissions "
                    "through), so the open succeeds with a read-only data file under a read-write "
                    "qcow2 node")
    return Expect(True, ro={"n0": parent_ro, "c0": ro}, because=because)


# -- auto-read-only of a child node, when its own is left out --------------------------

#: the child's auto-read-only in test_child_auto_read_only_default: left out, on, off
CHILD_ARO_VARIANTS = tuple(f"{role}-aro_{opt}" for role in CHILD_ROLES for opt in ("omitted", "on", "off"))

_ARO_INHERIT = ("block.c bdrv_inherited_options: a child that is not COW copies the parent's "
                "auto-read-only unless it sets its own (qdict_copy_default)")
_ARO_DEFAULT = {
    "qmp": ("blockdev-add sets no auto-read-only on the top node (blockdev.c bds_tree_init), so it "
            "is off (block.c update_flags_from_options: qemu_opt_get_bool_del(..., false))"),
    "drive": "-drive sets auto-read-only=on on the top node (blockdev.c blockdev_init, 9384a444f6)",
}


def effective_child_aro(role: str, interface: str, parent_aro: bool | None,
                        child_aro: bool | None) -> tuple[bool, str]:
    """The auto-read-only a *role* child of a node opened through *interface* (``qmp``:
    blockdev-add or -blockdev, ``drive``) gets, and why."""
    if child_aro is not None:
        return child_aro, "an explicit auto-read-only wins over the default and the parent's"
    if role == "backing":
        return False, ("a backing (COW) child defaults to auto-read-only=off, whatever the parent "
                       "has (block.c bdrv_inherited_options: 'backing files are opened read-only "
                       "by default')")
    if parent_aro is not None:
        return parent_aro, f"the {role} child inherits the parent's ({_ARO_INHERIT})"
    return (interface == "drive",
            f"the parent's is left out too: {_ARO_DEFAULT[interface]}; the {role} child inherits "
            f"it ({_ARO_INHERIT})")


def expect_child_auto_read_only(role: str, interface: str, parent_aro: bool | None,
                                child_aro: bool | None, refused: str, caps: Capabilities) -> Expect:
    """A read-only qcow2 ``n0`` (auto-read-only=*parent_aro*, None: left out) on read-only storage,
    opened through *interface*, with its *role* child given inline as a file node ``c0`` with
    read-only=off and auto-read-only=*child_aro* (None: left out). *refused* is the error of a
    read-write open of c0's file. The fd of c0's image is labelled ``child``.

    read-only=off on read-only storage opens only under auto-read-only (block.c
    bdrv_apply_auto_read_only; file-posix keeps ro=false and an O_RDONLY fd while nobody
    writes, raw_open_common / raw_reconfigure_getfd); a read-only qcow2 takes no WRITE on any
    child (bdrv_default_perms), so the dynamic node stays read-only.
    """
    aro, rule = effective_child_aro(role, interface, parent_aro, child_aro)
    given = "left out" if child_aro is None else f"auto-read-only={'on' if child_aro else 'off'}"
    parent = "left out" if parent_aro is None else ("on" if parent_aro else "off")
    because = (f"{interface}: read-only qcow2 with auto-read-only {parent}, {role} child read-only=off "
               f"and {given}: {rule}")
    if not aro:
        # block.c bdrv_open_backing_file prepends its own context to the backing child's error
        error = ("Could not open backing file: " if role == "backing" else "") + refused
        return Expect(False, error=error,
                      because=f"{because}; without auto-read-only a read-write file node needs an "
                              "O_RDWR fd at open (file-posix raw_open_common), which the storage refuses")
    if dynamic(caps):
        return Expect(True, ro={"n0": True, "c0": False}, fds={"child": O_RDONLY},
                      because=f"{because}; dynamic auto-read-only: ro=false with an O_RDONLY fd while "
                              "nobody writes (file-posix raw_reconfigure_getfd, 23dece19da)")
    return Expect(True, ro={"n0": True, "c0": True}, fds={"child": O_RDONLY},
                  because=f"{because}; auto-read-only: the node falls back to read-only "
                          "(bdrv_apply_auto_read_only)")
