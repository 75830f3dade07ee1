#!/bin/bash
# Known bug: blockdev-reopen with an empty options list aborts QEMU.
# qmp_blockdev_reopen() builds no queue from an empty list and passes the NULL
# queue to bdrv_reopen_multiple(), which asserts bs_queue != NULL.
# See docs/known-bugs.md. Exit: 0 reproduced, 1 not reproduced, 2 set-up error.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

qemu_start -name reopen-empty-list
rc=0
qmp blockdev-reopen '{"options": []}' || rc=$?
if ((rc != 2)); then
    # QEMU answered: an error reply (or a return) is the correct behaviour.
    qemu_quit
    not_reproduced "QEMU answered blockdev-reopen options=[] and kept running: $QMP_REPLY"
fi
qemu_wait_exit
stderr=$(cat "$WORK/qemu.stderr")
say "# QEMU exit status: $QEMU_STATUS; stderr: $stderr"
if ((QEMU_STATUS == 128 + 6)) && [[ $stderr == *'bs_queue != NULL'* ]]; then
    reproduced "QEMU died with SIGABRT on blockdev-reopen options=[]: $(grep -m1 Assertion "$WORK/qemu.stderr")"
fi
not_reproduced "no reply to blockdev-reopen options=[], QEMU exit status $QEMU_STATUS (SIGABRT is 134), stderr: $stderr"
