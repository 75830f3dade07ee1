#!/bin/bash
# Known bug: file-posix keeps an O_RDWR fd after the last writer leaves, when a
# blockdev-reopen that kept the fd came in between (auto-read-only=on).
# raw_reopen_commit() copies BDRVRawReopenState.open_flags, which
# raw_reopen_prepare() no longer fills in since 72373e40fb (v6.1), so
# s->open_flags becomes 0 (= O_RDONLY) while the fd is O_RDWR.
# See docs/known-bugs.md. Exit: 0 reproduced, 1 not reproduced, 2 set-up error.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

img=$WORK/f0.raw
"$QEMU_IMG_PROG" create -q -f raw "$img" 1M
qemu_start -name stale-open-flags

qmp_ok blockdev-add "{\"driver\": \"file\", \"node-name\": \"f0\", \"filename\": \"$img\", \"auto-read-only\": true}"
qmp_ok blockdev-add '{"driver": "raw", "node-name": "fmt0", "file": "f0"}'
# Relative to QEMU's cwd ($WORK): a long TMPDIR must not hit the 108-byte socket path limit.
qmp_ok nbd-server-start '{"addr": {"type": "unix", "data": {"path": "nbd.sock"}}}'
say "# no writer yet: $(fd_modes "$QEMU_PID" "$img")"

# Control: a writer cycle without a reopen returns the fd to O_RDONLY.
qmp_ok block-export-add '{"type": "nbd", "id": "e0", "node-name": "fmt0", "writable": true}'
say "# writable export e0: $(fd_modes "$QEMU_PID" "$img")"
qmp_ok block-export-del '{"id": "e0"}'
qmp_wait_event BLOCK_EXPORT_DELETED || setup_error "no BLOCK_EXPORT_DELETED for e0"
control=$(fd_modes "$QEMU_PID" "$img")
say "# e0 deleted (control): $control"
[[ $control == *O_RDONLY* && $control != *O_RDWR* ]] ||
    setup_error "auto-read-only did not downgrade the fd even without a reopen: $control"

# The bug: same cycle, with a blockdev-reopen (same options) while the writer is there.
qmp_ok block-export-add '{"type": "nbd", "id": "e1", "node-name": "fmt0", "writable": true}'
say "# writable export e1: $(fd_modes "$QEMU_PID" "$img"); locks: $(lock_ranges "$img" | paste -sd, -)"
qmp_ok blockdev-reopen "{\"options\": [{\"driver\": \"file\", \"node-name\": \"f0\", \"filename\": \"$img\", \"read-only\": false, \"auto-read-only\": true}]}"
say "# after blockdev-reopen f0 (fd kept?): $(fd_modes "$QEMU_PID" "$img")"
qmp_ok block-export-del '{"id": "e1"}'
qmp_wait_event BLOCK_EXPORT_DELETED || setup_error "no BLOCK_EXPORT_DELETED for e1"
after=$(fd_modes "$QEMU_PID" "$img")
locks=$(lock_ranges "$img" | paste -sd, -)
say "# e1 deleted: $after; locks: ${locks:-none}"

# Not part of the verdict: a second writer cycle opens a new fd and heals it.
qmp_ok block-export-add '{"type": "nbd", "id": "e2", "node-name": "fmt0", "writable": true}'
qmp_ok block-export-del '{"id": "e2"}'
qmp_wait_event BLOCK_EXPORT_DELETED || setup_error "no BLOCK_EXPORT_DELETED for e2"
say "# after a second writer cycle: $(fd_modes "$QEMU_PID" "$img")"
qemu_quit

if [[ $after == *O_RDWR* ]]; then
    write_lock=no
    has_lock_byte "$img" 101 && write_lock=yes
    reproduced "no writer left on f0 (auto-read-only=on) after blockdev-reopen + block-export-del, but its $after (write-permission lock byte 101 held: $write_lock)"
fi
not_reproduced "after blockdev-reopen + block-export-del the file node's $after"
