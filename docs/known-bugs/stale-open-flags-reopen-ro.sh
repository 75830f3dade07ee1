#!/bin/bash
# Known bug, second face of stale-open-flags.sh: after a blockdev-reopen that
# keeps file-posix's fd, "blockdev-reopen read-only=true" reports ro=true but
# keeps the O_RDWR fd. The first reopen leaves s->open_flags = 0 (= O_RDONLY),
# so raw_reconfigure_getfd() finds the wanted O_RDONLY already there.
# See docs/known-bugs.md. Exit: 0 reproduced, 1 not reproduced, 2 set-up error.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

img0=$WORK/f0.raw img1=$WORK/f1.raw
"$QEMU_IMG_PROG" create -q -f raw "$img0" 1M
"$QEMU_IMG_PROG" create -q -f raw "$img1" 1M
qemu_start -name stale-open-flags-reopen-ro
opts() { printf '{"driver": "file", "node-name": "%s", "filename": "%s"%s}' "$@"; }

# Control: f1 reopened read-only directly gets an O_RDONLY fd.
qmp_ok blockdev-add "$(opts f1 "$img1" ', "read-only": false')"
qmp_ok blockdev-reopen "{\"options\": [$(opts f1 "$img1" ', "read-only": true')]}"
control=$(fd_modes "$QEMU_PID" "$img1")
say "# f1 after a direct reopen read-only=true: $control"
[[ $control == *O_RDONLY* && $control != *O_RDWR* ]] || setup_error "even a direct reopen read-only=true keeps $control"

# The bug: f0 reopened with the same options first (keeps the fd), then read-only.
qmp_ok blockdev-add "$(opts f0 "$img0" ', "read-only": false')"
say "# f0 opened read-write: $(fd_modes "$QEMU_PID" "$img0")"
qmp_ok blockdev-reopen "{\"options\": [$(opts f0 "$img0" ', "read-only": false')]}"
say "# f0 after a reopen with the same options: $(fd_modes "$QEMU_PID" "$img0")"
qmp_ok blockdev-reopen "{\"options\": [$(opts f0 "$img0" ', "read-only": true')]}"
after=$(fd_modes "$QEMU_PID" "$img0")
say "# f0 after reopen read-only=true: $after"
node_ro f0
qemu_quit

if [[ $NODE_RO == true && $after == *O_RDWR* ]]; then
    reproduced "f0 reports ro=true after blockdev-reopen read-only=true, but its $after"
fi
not_reproduced "after the second reopen f0 reports ro=$NODE_RO with $after"
