#!/bin/bash
# Lead checked, not a bug on 7.2.22 / 10.0.2: "qemu-nbd without -r dies on an
# assertion (bdrv_graph_wrlock, SIGABRT) when the export's WRITE permission is
# refused". blk_exp_add(..., &error_fatal) would exit() inside the graph write
# lock (blk_insert_bs), and the atexit bdrv_close_all() would then abort; but
# qemu-nbd's own blk_new_open() asks for the same WRITE permission first and
# fails cleanly, so blk_exp_add() is never reached with an image that refuses
# writes. This script guards that: REPRODUCED only if qemu-nbd (or
# qemu-storage-daemon, which does reach that path) aborts.
# See docs/known-bugs.md. Exit: 0 reproduced, 1 not reproduced, 2 set-up error.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
need "$QEMU_NBD_PROG" "$QSD_PROG" unshare timeout
((EUID == 0)) || setup_error "needs root (a read-only bind mount in a private mount namespace)"

mkdir -p "$WORK/d/ro"
# A short dir in /tmp that uid 65534 can reach and write: qemu-nbd wants an
# absolute socket path, and a long TMPDIR must not hit the 108-byte limit.
pub=$(mktemp -d /tmp/qkb.XXXXXX)
EXTRA_DIRS+=("$pub")
chmod 1777 "$pub"
sock=$pub/sock
"$QEMU_IMG_PROG" create -q -f qcow2 "$WORK/d/img.qcow2" 1M
cp "$WORK/d/img.qcow2" "$pub/img.qcow2"
chmod 444 "$pub/img.qcow2"

# run_nbd LABEL WANT CMD...: run CMD (bounded), record "LABEL: status N: stderr".
# Anything but an abort or a refusal whose message contains WANT means the
# check did not test what it should.
results=()
aborted=no
run_nbd() {
    local label=$1 want=$2 status=0 msg
    shift 2
    rm -f "$sock"
    timeout -s KILL "$QMP_TIMEOUT" "$@" 2>"$WORK/nbd.err" || status=$?
    msg=$(head -n1 "$WORK/nbd.err")
    say "# $label: exit status $status: $msg"
    results+=("$label: status $status: $msg")
    if ((status == 128 + 6)); then
        aborted=yes
    elif ((status != 1)) || [[ $msg != *"$want"* ]]; then
        setup_error "$label: expected a refusal ($want) or an abort, got status $status: $msg"
    fi
}

# Root ignores file modes, so storage that refuses writes for root: EROFS.
# The scripts for sh -c are single-quoted on purpose: sh expands $1.. itself.
# shellcheck disable=SC2016
run_nbd "read-only bind mount (EROFS)" "Read-only file system" unshare -m sh -c \
    'mount --bind "$1" "$1/ro" && mount -o remount,bind,ro "$1/ro" && exec "$2" -k "$3" -f qcow2 "$1/ro/img.qcow2"' \
    sh "$WORK/d" "$QEMU_NBD_PROG" "$sock"
# shellcheck disable=SC2016
run_nbd "read-only bind mount, file.auto-read-only=on (EROFS)" "Read-only file system" unshare -m sh -c \
    'mount --bind "$1" "$1/ro" && mount -o remount,bind,ro "$1/ro" && exec "$2" -k "$3" --image-opts "driver=qcow2,file.driver=file,file.filename=$1/ro/img.qcow2,file.auto-read-only=on"' \
    sh "$WORK/d" "$QEMU_NBD_PROG" "$sock"
# And EACCES: a 0444 file opened by an unprivileged uid.
run_nbd "0444 file as uid 65534 (EACCES)" "Permission denied" setpriv --reuid=65534 --regid=65534 --clear-groups \
    "$QEMU_NBD_PROG" -k "$sock" -f qcow2 "$pub/img.qcow2"

# Same refusal through qemu-storage-daemon --export: here blk_exp_add() really
# fails inside blk_insert_bs() (the node opened, the WRITE permission is refused),
# and error_fatal exits there; QSD has no atexit bdrv_close_all(), so no abort.
# shellcheck disable=SC2016
run_nbd "qemu-storage-daemon --export writable=on, auto-read-only=on (EROFS)" "--export type=nbd,id=e,node-name=f,writable=on: Could not open" unshare -m sh -c \
    'mount --bind "$1" "$1/ro" && mount -o remount,bind,ro "$1/ro" && exec "$2" --blockdev "driver=file,node-name=f,filename=$1/ro/img.qcow2,auto-read-only=on" --nbd-server "addr.type=unix,addr.path=$3" --export type=nbd,id=e,node-name=f,writable=on' \
    sh "$WORK/d" "$QSD_PROG" "$sock"

summary=$(printf '%s; ' "${results[@]}")
[[ $aborted == yes ]] && reproduced "an abort: ${summary%; }"
not_reproduced "every refusal was a clean exit, no abort: ${summary%; }"
