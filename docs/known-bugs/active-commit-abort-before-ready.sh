#!/bin/bash
# Fixed in QEMU 9.1 (7d99ae59a2): an active block-commit cancelled *before*
# BLOCK_JOB_READY (an abort) left the base node read-write. Expected:
# REPRODUCED on 7.2, NOT REPRODUCED on 9.1 and later. The cancel-after-READY
# case is still broken (active-commit-cancel-after-ready.sh).
# See docs/known-bugs.md. Exit: 0 reproduced, 1 not reproduced, 2 set-up error.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
need "$QEMU_IO_PROG"

base=$WORK/base.qcow2 mid=$WORK/mid.qcow2 top=$WORK/top.qcow2
"$QEMU_IMG_PROG" create -q -f qcow2 "$base" 4M
"$QEMU_IMG_PROG" create -q -f qcow2 -b "$base" -F qcow2 "$mid"
"$QEMU_IMG_PROG" create -q -f qcow2 -b "$mid" -F qcow2 "$top"
# Data to commit: with speed=1 the job sleeps (rate limit) after its first copy pass,
# before it can become READY.
"$QEMU_IO_PROG" -f qcow2 -c 'write -P 0x5a 0 4M' "$top" >/dev/null
qemu_start -name active-commit-abort-before-ready

# base <- mid <- top; file nodes auto-read-only=on, base and mid read-only.
qmp_ok blockdev-add "{\"driver\": \"file\", \"node-name\": \"base-file\", \"filename\": \"$base\", \"auto-read-only\": true}"
qmp_ok blockdev-add '{"driver": "qcow2", "node-name": "base-fmt", "file": "base-file", "backing": null, "read-only": true}'
qmp_ok blockdev-add "{\"driver\": \"file\", \"node-name\": \"mid-file\", \"filename\": \"$mid\", \"auto-read-only\": true}"
qmp_ok blockdev-add '{"driver": "qcow2", "node-name": "mid-fmt", "file": "mid-file", "backing": "base-fmt", "read-only": true}'
qmp_ok blockdev-add "{\"driver\": \"file\", \"node-name\": \"top-file\", \"filename\": \"$top\", \"auto-read-only\": true}"
qmp_ok blockdev-add '{"driver": "qcow2", "node-name": "top-fmt", "file": "top-file", "backing": "mid-fmt"}'
node_ro base-fmt
say "# before the job, base: $(fd_modes "$QEMU_PID" "$base"); locks: $(lock_ranges "$base" | paste -sd, -)"
[[ $NODE_RO == true ]] || setup_error "base-fmt is not read-only to begin with"
img_info=$("$QEMU_IMG_PROG" info "$base" 2>&1) || setup_error "qemu-img info of the base fails before the job: $img_info"
say "# before the job, qemu-img info (without -U) of the base: ok"

qmp_ok block-commit '{"job-id": "a", "device": "top-fmt", "base-node": "base-fmt", "speed": 1}'
say "# job running, base: $(fd_modes "$QEMU_PID" "$base")"
qmp_ok block-job-cancel '{"device": "a"}'
qmp_wait_event 'BLOCK_JOB_COMPLETED|BLOCK_JOB_CANCELLED' || setup_error "job did not end within ${QMP_TIMEOUT}s"
ended=$(jq -r .event <<<"$QMP_EVENT")
if printf '%s\n' "${QMP_EVENTS[@]}" | grep -q BLOCK_JOB_READY; then
    setup_error "the job became READY before the cancel"
fi

node_ro base-fmt
fds=$(fd_modes "$QEMU_PID" "$base")
locks=$(lock_ranges "$base" | paste -sd, -)
write_lock=no
has_lock_byte "$base" 101 && write_lock=yes
say "# after $ended, base: $fds; locks: ${locks:-none}"
# Another process that wants the base (as a backing file, for a copy...) is locked out.
if img_info=$("$QEMU_IMG_PROG" info "$base" 2>&1 | head -n1); then img_info=ok; fi
say "# qemu-img info (without -U) of the base: $img_info"
qemu_quit

if [[ $NODE_RO == false || $fds == *O_RDWR* || $write_lock == yes ]]; then
    reproduced "after block-job-cancel of an active commit before READY ($ended) base-fmt has ro=$NODE_RO, base-file $fds, write lock (byte 101): $write_lock; qemu-img info: $img_info"
fi
not_reproduced "after block-job-cancel of an active commit before READY ($ended) base-fmt is back to ro=$NODE_RO, base-file $fds, no write lock"
