"""Per protocol driver: how a read-write open of read-only storage is refused,
whether ``auto-read-only`` can turn that into a read-only open, and how a
reopen to read-write is refused. Shared by the scenario modules.

Sources (QEMU 7.2 and 10.0 alike, checked against both):

* file: util/osdep.c ``qemu_open_internal`` ("Could not open '<path>': <strerror>");
  file-posix.c falls back to O_RDONLY under auto-read-only.
* nbd: the client reports a read-only export as EPERM ("Could not open image:
  Permission denied", block/nbd.c since 51edbf537d), ``bdrv_apply_auto_read_only``.
* http: block/curl.c ``curl_open``:
  ``bdrv_apply_auto_read_only(bs, "curl driver does not support writes")``.
* iscsi: block/iscsi.c ``iscsi_open``:
  ``bdrv_apply_auto_read_only(bs, "LUN is write protected")`` for a LUN with
  the write-protect bit; ``iscsi_reopen_prepare``: "Cannot open a write
  protected LUN as read-write".
* ssh: block/ssh.c ``connect_to_ssh`` opens the remote file with ``O_RDWR``
  for a read-write node and has no auto-read-only fallback at all; a
  refusal is ``sftp_error_setg(errp, s, "failed to open remote file '%s'")``.
  ssh and http have no ``bdrv_reopen_prepare``: block.c reports
  "Block format '<drv>' used by node '<node>' does not support reopening files".
"""
from __future__ import annotations

import re

from ..backends.base import Target

CURL_NO_WRITES = r"curl driver does not support writes"
ISCSI_WRITE_PROTECTED = r"LUN is write protected"
ISCSI_CANT_REOPEN_RW = r"Cannot open a write protected LUN as read-write"
#: internal-sftp -R (sftp-server.c: every modifying request is SSH2_FX_PERMISSION_DENIED)
SFTP_PERMISSION_DENIED = r"SFTP server: Permission denied \(libssh error code: 1, sftp error code: 3\)"

#: drivers whose read-write open of read-only storage ``auto-read-only`` turns into ro=true
HONOURS_AUTO_READ_ONLY = ("file", "nbd", "http", "iscsi")


def ssh_open_refused(target: Target) -> str:
    path = target.options["path"]
    return rf"failed to open remote file '{re.escape(str(path))}': {SFTP_PERMISSION_DENIED}"


def refused_open(target: Target) -> str | None:
    """The error (regex) of a read-write open of *target*'s read-only storage without
    auto-read-only, for the protocol drivers other than file; None if not known here."""
    return {
        "nbd": r"Could not open image: Permission denied",
        "http": CURL_NO_WRITES,
        "iscsi": ISCSI_WRITE_PROTECTED,
        "ssh": ssh_open_refused(target) if target.driver == "ssh" else "",
    }.get(target.driver)


def honours_auto_read_only(target: Target) -> bool:
    return target.driver in HONOURS_AUTO_READ_ONLY


def no_reopen(driver: str, node: str = "[^']+") -> str:
    """block.c ``bdrv_reopen_prepare`` for a driver without ``.bdrv_reopen_prepare``."""
    return rf"Block format '{driver}' used by node '{node}' does not support reopening files"


#: drivers that cannot be reopened at all (no .bdrv_reopen_prepare)
CANNOT_REOPEN = ("http", "ssh")
