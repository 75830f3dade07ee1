#!/bin/bash
# Known bug: HMP qemu-io write on an inactive node (blockdev-set-active false) aborts QEMU.
# blk_insert_bs() gives a BlockBackend on an inactive node disable_perm, so the
# WRITE permission qemu-io's command() asks for is never checked; the write
# reaches bdrv_co_write_req_prepare(), which asserts !(open_flags & BDRV_O_INACTIVE).
# See docs/known-bugs.md. Exit: 0 reproduced, 1 not reproduced, 2 set-up error.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

"$QEMU_IMG_PROG" create -q -f qcow2 "$WORK/t.qcow2" 1M
qemu_start -name inactive-write-aborts \
    -blockdev "{\"driver\":\"file\",\"node-name\":\"f0\",\"filename\":\"$WORK/t.qcow2\",\"auto-read-only\":true}" \
    -blockdev '{"driver":"qcow2","node-name":"n0","file":"f0"}'
rc=0
qmp blockdev-set-active '{"node-name": "n0", "active": false}' || rc=$?
if ((rc == 1)); then
    reply=$QMP_REPLY
    qemu_quit
    not_reproduced "no inactive nodes in this build (blockdev-set-active is QEMU 10.0+): $reply"
fi
((rc == 0)) || setup_error "blockdev-set-active n0 false: $QMP_REPLY"
rc=0
qmp human-monitor-command '{"command-line": "qemu-io n0 \"write 0 512\""}' || rc=$?
if ((rc != 2)); then
    reply=$QMP_REPLY
    qemu_quit
    not_reproduced "QEMU answered the write on the inactive node and kept running: $reply"
fi
qemu_wait_exit
stderr=$(cat "$WORK/qemu.stderr")
say "# QEMU exit status: $QEMU_STATUS; stderr: $stderr"
if ((QEMU_STATUS == 128 + 6)) && [[ $stderr == *'BDRV_O_INACTIVE'* ]]; then
    reproduced "QEMU died with SIGABRT on a write to an inactive node: $(grep -m1 Assertion "$WORK/qemu.stderr")"
fi
not_reproduced "no reply to the write, QEMU exit status $QEMU_STATUS (SIGABRT is 134), stderr: $stderr"
