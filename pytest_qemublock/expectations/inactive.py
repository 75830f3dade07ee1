"""Expectations of inactive nodes (suites/test_inactive.py), QEMU 10.0+.

``blockdev-set-active`` (8cd37207f8) and BlockDeviceInfo's ``active``
(aec81049c2) came with Kevin Wolf's series for qemu-storage-daemon
migration (10.0). What an inactive node means for writability:

* block.c ``bdrv_inactivate_recurse`` inactivates the node and its children
  (a qcow2 n0 over file f0: both ``active=false``) and refreshes the
  permissions; ``bdrv_is_writable`` is false for an inactive node
  (``bdrv_is_writable_after_reopen``: BDRV_O_INACTIVE), so no WRITE is taken
  and file-posix's dynamic auto-read-only drops f0's fd to O_RDONLY
  (``raw_check_perm``); the nodes keep ``ro=false`` ("inactivated images may
  not be written to but do not count as read-only images", bdrv_is_writable);
* an NBD export may be added to an inactive node with ``allow-inactive``
  (1600ef01ab), even ``writable``; the node stays inactive and the server
  refuses every request but reads with EPERM, "export is inactive"
  (nbd/server.c ``nbd_handle_request``, 2e73a17c68), so a client's write
  fails with ``Operation not permitted`` and reads work;
* without ``allow-inactive`` block/export/export.c ``blk_exp_add`` activates
  the node first (``bdrv_activate``, an error since 69f28176ca): a writable
  export then takes WRITE and f0 switches to O_RDWR;
* ``blockdev-set-active`` true activates it again (``bdrv_activate``), with
  its WRITE permission back.

Checked against 10.0.2; 7.2 has neither the command nor the member.
"""
from __future__ import annotations

from ..qemu.capabilities import Capabilities
from ..scenario.known_bugs import INACTIVE_WRITE_ABORTS
from ..scenario.outcome import Expect
from .common import O_RDONLY, O_RDWR, image_fd

NODES = ("n0", "f0")
#: qemu-io's report of a write the NBD server refused with EPERM (strerror)
NBD_WRITE_REFUSED = "write failed: Operation not permitted"


def missing(caps: Capabilities) -> str | None:
    """Why the build cannot run the inactive scenario (a skip reason), or None."""
    lacking = []
    if not caps.has_command("blockdev-set-active"):
        lacking.append("no QMP command blockdev-set-active")
    if "active" not in caps.members.get("query-named-block-nodes", []):
        lacking.append("no member 'active' in BlockDeviceInfo (query-named-block-nodes)")
    return "; ".join(lacking) or None


def missing_allow_inactive(caps: Capabilities) -> str | None:
    if "allow-inactive" not in caps.members.get("block-export-add", []):
        return "block-export-add has no member allow-inactive"
    return None


State = tuple[Expect, dict[str, bool]]  # the expected outcome, and `active` per node


def _state(active: bool, *, because: str) -> State:
    exp = Expect(True, ro={n: False for n in NODES}, fds=image_fd(O_RDWR if active else O_RDONLY),
                 because=because)
    return exp, {n: active for n in NODES}


def opened() -> State:
    """qcow2 n0 (read-write) over file f0 (auto-read-only=on) on writable storage; (Expect, active)."""
    return _state(True, because="a read-write qcow2 takes WRITE on its file (block.c "
                                "bdrv_default_perms_for_storage): f0's fd is O_RDWR; nodes start active")


def inactivated() -> State:
    return _state(False, because=(
        "block.c bdrv_inactivate_recurse (via qmp_blockdev_set_active, 8cd37207f8) inactivates n0 and "
        "its child f0 and refreshes permissions: an inactive node is not writable (bdrv_is_writable), "
        "so nothing takes WRITE and dynamic file-posix drops f0 to O_RDONLY (raw_check_perm); ro stays "
        "false (inactive is not read-only)"))


def export_allow_inactive() -> State:
    exp, active = inactivated()
    return exp.replace(because="block/export/export.c blk_exp_add with allow-inactive (1600ef01ab) leaves "
                               f"the node inactive, writable or not; so: {exp.because}"), active


def export_activates() -> State:
    return _state(True, because=(
        "block/export/export.c blk_exp_add without allow-inactive calls bdrv_activate first "
        "(69f28176ca makes its failure an error); the writable export then takes WRITE, f0 O_RDWR"))


def reactivated() -> State:
    return _state(True, because="blockdev-set-active active=true: block.c bdrv_activate, permissions "
                                "refreshed with the qcow2 node writable again: f0 O_RDWR")


NBD_WRITE_BECAUSE = ("nbd/server.c nbd_handle_request: on an inactive node every request but "
                     "NBD_CMD_READ gets EPERM ('export is inactive', 2e73a17c68)")


def hmp_write_refused() -> Expect:
    """HMP ``qemu-io n0 "write ..."`` on the inactive n0: refused (any error), n0 as it was."""
    exp, _ = inactivated()
    return exp.replace(ok=False, error=None, bug=INACTIVE_WRITE_ABORTS, because=(
        "an inactive node may not be written to (block.c bdrv_is_writable; block/io.c "
        "bdrv_co_write_req_prepare asserts it): the write must be refused and n0 left inactive"))


