"""Per QEMU protocol driver, every fact about read-only storage the suites rely on,
each stated once with the QEMU source that decides it (QEMU 7.2 and 10.0 alike):

* does a read-write open of read-only storage degrade to read-only under
  ``auto-read-only=on`` (``bdrv_apply_auto_read_only``), or is it refused;
* the error of a refused read-write open without auto-read-only;
* can the node be reopened at all (does the driver have ``.bdrv_reopen_prepare``),
  and the error of a refused reopen to read-write;
* does Debian build the driver as a loadable module (package qemu-block-extra),
  so that a build whose module does not load skips it.

A backend names its driver (:attr:`.base.Backend.driver`); the expectations and
the suites look the facts up here, never by backend name.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .base import Target

# Error texts (regexes).
#: what QEMU says today; it means "NBD export is read-only" (known bug nbd-ro-export-message-lost in
#: scenario/known_bugs.py, asserted per NBD server kind by test_open.py test_read_only_export_message)
NBD_RO_EXPORT = r"Could not open image: Permission denied"
NBD_CANT_REOPEN_RW = r"Can't reopen read-only NBD mount as read/write"
CURL_NO_WRITES = r"curl driver does not support writes"
ISCSI_WRITE_PROTECTED = r"LUN is write protected"
ISCSI_CANT_REOPEN_RW = r"Cannot open a write protected LUN as read-write"
#: block/file-posix.c check_hdev_writable: BLKROGET says read-only -> -EACCES
HOSTDEV_NOT_WRITABLE = r"The device is not writable: Permission denied"
#: internal-sftp -R (sftp-server.c: every modifying request is SSH2_FX_PERMISSION_DENIED)
SFTP_PERMISSION_DENIED = r"SFTP server: Permission denied \(libssh error code: 1, sftp error code: 3\)"


def open_failed(target: Target) -> str:
    """The error of a refused read-write open of *target*'s file (util/osdep.c qemu_open_internal)."""
    return rf"Could not open '{re.escape(str(target.fd_path))}': {re.escape(target.error_text or '')}"


def ssh_open_refused(target: Target) -> str:
    path = target.options["path"]
    return rf"failed to open remote file '{re.escape(str(path))}': {SFTP_PERMISSION_DENIED}"


def no_reopen(driver: str, node: str = "[^']+") -> str:
    """block.c ``bdrv_reopen_prepare`` for a driver without ``.bdrv_reopen_prepare``."""
    return rf"Block format '{driver}' used by node '{node}' does not support reopening files"


@dataclass(frozen=True)
class Driver:
    """One protocol driver's behaviour on storage that refuses writes."""

    name: str
    #: a read-write open of read-only storage degrades under auto-read-only=on
    degrades: bool
    degrades_in: str  # the QEMU source that decides it
    #: the error (regex) of a refused read-write open without auto-read-only
    refused_open: Callable[[Target], str]
    refused_open_in: str
    #: the error (regex) of a refused reopen to read-write of read-only storage;
    #: None: the driver has no .bdrv_reopen_prepare, every reopen fails (:func:`no_reopen`)
    refused_reopen_rw: Callable[[Target], str] | None
    reopen_in: str
    #: Debian builds it as a loadable module (qemu-block-extra), see qemu.capabilities.MODULE_DRIVERS
    module: bool = False

    @property
    def reopens(self) -> bool:
        return self.refused_reopen_rw is not None


def _text(regex: str) -> Callable[[Target], str]:
    return lambda target: regex


DRIVERS: dict[str, Driver] = {d.name: d for d in (
    Driver("file",
           degrades=True,
           degrades_in="block/file-posix.c raw_open_common: falls back to O_RDONLY under auto-read-only "
                       "(dynamic auto-read-only since 23dece19da keeps ro=false)",
           refused_open=open_failed,
           refused_open_in="util/osdep.c qemu_open_internal",
           refused_reopen_rw=open_failed,
           reopen_in="block/file-posix.c raw_reopen_prepare -> raw_reconfigure_getfd (an O_RDWR open)"),
    Driver("nbd",
           degrades=True,
           degrades_in="block/nbd.c nbd_handle_updated_info: NBD_FLAG_READ_ONLY -> "
                       "bdrv_apply_auto_read_only(bs, \"NBD export is read-only\") (6c2e581d4d)",
           refused_open=_text(NBD_RO_EXPORT),
           refused_open_in="block/nbd.c (the client reports a read-only export as EACCES since a71d597b98)",
           refused_reopen_rw=_text(NBD_CANT_REOPEN_RW),
           reopen_in="block/nbd.c nbd_client_reopen_prepare (ignores auto-read-only)"),
    Driver("http",
           degrades=True,
           degrades_in="block/curl.c curl_open: "
                       "bdrv_apply_auto_read_only(bs, \"curl driver does not support writes\") (6ceef36acb)",
           refused_open=_text(CURL_NO_WRITES),
           refused_open_in="block/curl.c curl_open",
           refused_reopen_rw=None,
           reopen_in="block/curl.c has no .bdrv_reopen_prepare: block.c bdrv_reopen_prepare refuses",
           module=True),
    Driver("ssh",
           degrades=False,
           degrades_in="block/ssh.c connect_to_ssh opens the remote file O_RDWR for a read-write node "
                       "and has no auto-read-only fallback",
           refused_open=ssh_open_refused,
           refused_open_in="block/ssh.c connect_to_ssh: "
                           "sftp_error_setg(errp, s, \"failed to open remote file '%s'\")",
           refused_reopen_rw=None,
           reopen_in="block/ssh.c has no .bdrv_reopen_prepare: block.c bdrv_reopen_prepare refuses",
           module=True),
    Driver("iscsi",
           degrades=True,
           degrades_in="block/iscsi.c iscsi_open: a write-protected LUN -> "
                       "bdrv_apply_auto_read_only(bs, \"LUN is write protected\") (8f3bf50d34)",
           refused_open=_text(ISCSI_WRITE_PROTECTED),
           refused_open_in="block/iscsi.c iscsi_open",
           refused_reopen_rw=_text(ISCSI_CANT_REOPEN_RW),
           reopen_in="block/iscsi.c iscsi_reopen_prepare (ignores auto-read-only)",
           module=True),
    Driver("host_device",
           degrades=True,
           degrades_in="block/file-posix.c hdev_open -> raw_open_common: under auto-read-only the fd is "
                       "O_RDONLY while nothing writes (dynamic, 23dece19da) and check_hdev_writable only "
                       "runs for an O_RDWR fd (bca5283bd4)",
           refused_open=_text(HOSTDEV_NOT_WRITABLE),
           refused_open_in="block/file-posix.c raw_open_common: check_hdev_writable (ioctl BLKROGET) "
                           "after the O_RDWR open, which the kernel allows on a read-only loop device",
           refused_reopen_rw=_text(HOSTDEV_NOT_WRITABLE),
           reopen_in="block/file-posix.c raw_reconfigure_getfd: check_hdev_writable on the new O_RDWR fd "
                     "(bca5283bd4)"),
)}


def facts(driver: str) -> Driver:
    """The facts of protocol driver *driver*."""
    try:
        return DRIVERS[driver]
    except KeyError:
        raise KeyError(f"no facts about QEMU driver {driver!r} in backends/drivers.py "
                       f"(known: {', '.join(DRIVERS)})") from None


def refused_open(target: Target) -> str:
    """The error (regex) of a read-write open of *target*'s read-only storage without auto-read-only."""
    return facts(target.driver).refused_open(target)


def honours_auto_read_only(target: Target) -> bool:
    """Whether a read-write open of *target*'s read-only storage degrades under auto-read-only."""
    return facts(target.driver).degrades


def refused_reopen_rw(target: Target, node: str = "[^']+") -> str:
    """The error (regex) of a reopen of node *node* to read-write on *target*'s read-only storage."""
    d = facts(target.driver)
    return no_reopen(d.name, node) if d.refused_reopen_rw is None else d.refused_reopen_rw(target)


#: drivers whose read-write open of read-only storage ``auto-read-only`` turns into ro=true
HONOURS_AUTO_READ_ONLY = tuple(d.name for d in DRIVERS.values() if d.degrades)
#: drivers that cannot be reopened at all (no .bdrv_reopen_prepare)
CANNOT_REOPEN = tuple(d.name for d in DRIVERS.values() if not d.reopens)
