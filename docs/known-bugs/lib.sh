# shellcheck shell=bash disable=SC2034  # (variables set here for the scripts)
# Shared by the reproducers in this directory: QEMU binaries, a private temp
# dir, a QMP client on a bash coproc, /proc evidence and the verdict line.
# Source it from a script that has done `set -euo pipefail`; do not run it.

# The iotests names; default: whatever is on PATH.
QEMU_PROG=${QEMU_PROG:-qemu-system-x86_64}
QEMU_IMG_PROG=${QEMU_IMG_PROG:-qemu-img}
QEMU_IO_PROG=${QEMU_IO_PROG:-qemu-io}
QEMU_NBD_PROG=${QEMU_NBD_PROG:-qemu-nbd}
QSD_PROG=${QSD_PROG:-qemu-storage-daemon}
# Every wait on QEMU is bounded by this many seconds.
QMP_TIMEOUT=${QMP_TIMEOUT:-10}

# -- verdict --------------------------------------------------------------------
reproduced()     { printf 'REPRODUCED: %s\n' "$*"; exit 0; }
not_reproduced() { printf 'NOT REPRODUCED: %s\n' "$*"; exit 1; }
setup_error()    { printf 'SETUP ERROR: %s\n' "$*"; exit 2; }
say()            { printf '%s\n' "$*"; }

# An unexpected failure is a set-up error (exit 2), never a silent verdict.
set -E
trap 'setup_error "command failed (status $?) at ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND"' ERR

# -- private temp dir; nothing survives the script --------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/qemu-known-bug.XXXXXX")
PIDS=()
EXTRA_DIRS=()  # more private dirs for cleanup to remove
cleanup() {
    local rc=$?
    set +e
    trap - ERR
    local pid
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null
    done
    wait 2>/dev/null
    rm -rf "$WORK" "${EXTRA_DIRS[@]}"
    exit "$rc"
}
trap cleanup EXIT
trap 'setup_error "interrupted by a signal"' INT TERM HUP
# An abort must not leave a core file behind.
ulimit -c 0
# A write to a QEMU that died must fail (EPIPE), not kill the script.
trap '' PIPE

need() {
    local prog
    for prog in "$@"; do
        command -v "$prog" >/dev/null || setup_error "$prog not found (set the iotests variable or PATH)"
    done
}
need "$QEMU_PROG" "$QEMU_IMG_PROG" setpriv jq
say "QEMU: $("$QEMU_PROG" --version | head -n1)"

# -- QMP over stdio ---------------------------------------------------------------
# QEMU runs in $WORK, dies with this script (pdeathsig) and speaks QMP on its
# stdin/stdout; stderr goes to $WORK/qemu.stderr. Arguments go to QEMU
# (the scripts pass -name, so that ps shows which reproducer started it).
QMP_ID=0
QMP_EVENTS=()
qemu_start() {
    coproc QEMU_CO {
        cd "$WORK" && exec setpriv --pdeathsig KILL "$QEMU_PROG" \
            -accel tcg -S -M none -nodefaults -display none -qmp stdio "$@" 2>"$WORK/qemu.stderr"
    }
    QEMU_PID=$QEMU_CO_PID
    PIDS+=("$QEMU_PID")
    # Own copies of the pipe ends: bash drops QEMU_CO[] as soon as QEMU exits.
    exec {QMP_IN}<&"${QEMU_CO[0]}" {QMP_OUT}>&"${QEMU_CO[1]}"
    qmp_read_line || setup_error "no QMP greeting from $QEMU_PROG: $(cat "$WORK/qemu.stderr")"
    qmp qmp_capabilities || setup_error "qmp_capabilities failed: $QMP_REPLY"
}

# Read one line from QEMU into QMP_LINE (fails on EOF or after QMP_TIMEOUT).
qmp_read_line() {
    QMP_LINE=
    IFS= read -r -t "$QMP_TIMEOUT" -u "$QMP_IN" QMP_LINE || return 1
    say "<- $QMP_LINE"
}

# qmp COMMAND [ARGUMENTS-JSON]: the reply line is in QMP_REPLY.
# Status: 0 for a return, 1 for an error reply, 2 if QEMU went away or timed out.
# Events that arrive meanwhile are kept for qmp_wait_event.
qmp() {
    local msg id=$((++QMP_ID))
    msg="{\"execute\": \"$1\"${2:+, \"arguments\": $2}, \"id\": $id}"
    QMP_REPLY=
    say "-> $msg"
    { printf '%s\n' "$msg" 1>&"$QMP_OUT"; } 2>/dev/null || return 2
    while qmp_read_line; do
        if [[ $QMP_LINE =~ \"id\":\ ${id}[,}] ]]; then
            QMP_REPLY=$QMP_LINE
            [[ $QMP_LINE == *'"return"'* ]] && return 0
            return 1
        elif [[ $QMP_LINE == *'"event"'* ]]; then
            QMP_EVENTS+=("$QMP_LINE")
        fi
    done
    return 2
}

# qmp_ok COMMAND [ARGUMENTS-JSON]: like qmp, but anything but a return is a set-up error.
qmp_ok() {
    local rc=0
    qmp "$@" || rc=$?
    ((rc == 0)) || setup_error "$1 failed: ${QMP_REPLY:-no reply (QEMU gone or timed out)} $(cat "$WORK/qemu.stderr")"
}

# qmp_wait_event REGEX: wait for an event whose name matches REGEX (anchored);
# the event line is in QMP_EVENT (for the scripts). Fails after QMP_TIMEOUT without a line.
qmp_wait_event() {
    local i re="\"event\": \"($1)\""
    for i in "${!QMP_EVENTS[@]}"; do
        if [[ ${QMP_EVENTS[i]} =~ $re ]]; then
            QMP_EVENT=${QMP_EVENTS[i]}
            unset 'QMP_EVENTS[i]'
            return 0
        fi
    done
    while qmp_read_line; do
        if [[ $QMP_LINE =~ $re ]]; then
            QMP_EVENT=$QMP_LINE
            return 0
        elif [[ $QMP_LINE == *'"event"'* ]]; then
            QMP_EVENTS+=("$QMP_LINE")
        fi
    done
    return 1
}

# node_ro NODE-NAME: sets NODE_RO to the node's "ro" in query-named-block-nodes
# ("true"/"false"). Not for $(...): the QMP id counter must stay in this shell.
node_ro() {
    qmp_ok query-named-block-nodes '{"flat": true}'
    NODE_RO=$(jq -r --arg n "$1" '.return[] | select(."node-name" == $n) | .ro' <<<"$QMP_REPLY")
    say "# $1: ro=$NODE_RO"
}

# qemu_wait_exit: wait (bounded) for QEMU to exit; its wait status is in QEMU_STATUS.
qemu_wait_exit() {
    local i state
    for ((i = 0; i < QMP_TIMEOUT * 10; i++)); do
        # A zombie still answers kill -0; its state in /proc/PID/stat is Z.
        state=$(awk '{print $3}' "/proc/$QEMU_PID/stat" 2>/dev/null) || break
        [[ $state == Z ]] && break
        sleep 0.1
    done
    kill -KILL "$QEMU_PID" 2>/dev/null || true
    QEMU_STATUS=0
    wait "$QEMU_PID" || QEMU_STATUS=$?
}

# qemu_quit: ask QEMU to quit and wait (bounded) until it has.
qemu_quit() {
    qmp quit || true
    qemu_wait_exit
}

# -- /proc evidence -----------------------------------------------------------------
# fd_modes PID PATH: "fd N O_RDWR" for each of PID's descriptors on PATH
# (access mode = fdinfo flags & 3).
fd_modes() {
    local fd flags
    local -a names=(O_RDONLY O_WRONLY O_RDWR ?)
    for fd in /proc/"$1"/fd/*; do
        if [[ $(readlink "$fd") == "$2" ]]; then
            flags=$(awk '/^flags:/ {print $2}' "/proc/$1/fdinfo/${fd##*/}")
            printf 'fd %s %s\n' "${fd##*/}" "${names[8#$flags & 3]}"
        fi
    done
}

# lock_ranges PATH: QEMU's OFD lock ranges on PATH from /proc/locks, e.g.
# "READ 100-101" (adjacent bytes are merged by the kernel, so read whole ranges).
lock_ranges() {
    local id
    id=$(printf '%02x:%02x:%s' "$(stat -c %Hd "$1")" "$(stat -c %Ld "$1")" "$(stat -c %i "$1")")
    awk -v id="$id" '$6 == id && $2 == "OFDLCK" {print $4 " " $7 "-" $8}' /proc/locks
}

# has_lock_byte PATH BYTE: is BYTE inside one of the lock ranges on PATH?
# QEMU locks byte 100+bit for each permission it holds (WRITE = 101) and
# 200+bit for each permission it does not share.
has_lock_byte() {
    local _mode range
    while read -r _mode range; do
        ((${range%-*} <= $2 && $2 <= ${range#*-})) && return 0
    done < <(lock_ranges "$1")
    return 1
}
