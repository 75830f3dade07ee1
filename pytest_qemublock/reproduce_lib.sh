# -- helpers of a generated reproduce.sh (pytest_qemublock/reproduce_lib.sh)
# Each step is compared with the run: "key" steps decide the verdict, "ctx" steps
# (those before the deviation) are only reported when they differ.
DIFFS=() KEY_DIFFS=() PIDS=() CHECKED=0 KEY_CHECKED=0
declare -A PID
say() { printf '%s\n' "$*"; }
setup_error() { say "SETUP ERROR: $*"; exit 2; }
cleanup() {
    local rc=$? pid
    set +e
    exec 2>/dev/null  # no job notices for the processes killed here
    trap - ERR
    for pid in "${PIDS[@]}" ${REPLAY_PID:+"$REPLAY_PID"}; do kill -KILL "$pid" 2>/dev/null; done
    wait 2>/dev/null
    # a read-only bind mount lives in the holder's namespace and went with it
    rm -rf "$W"
    exit "$rc"
}
trap cleanup EXIT
trap 'setup_error "interrupted by a signal"' INT TERM HUP
trap '' PIPE
ulimit -c 0  # an abort must leave no core file
for prog in python3 setpriv timeout; do
    command -v "$prog" >/dev/null || setup_error "$prog not found"
done
# the interpreter itself, not a wrapper script in front of it (pyenv's shims)
PYTHON=$(python3 -c 'import sys; print(sys.executable)') || setup_error "python3 does not run"

# ask FIELD...: one request to the client (tab-separated), its answer in ANSWER.
ask() {
    local IFS=$'\t'
    printf '%s\n' "$*" >&"${REPLAY[1]}" 2>/dev/null || setup_error "the replay client is gone"
    IFS= read -r -t "$((${QMP_TIMEOUT%.*} + 5))" -u "${REPLAY[0]}" ANSWER ||
        setup_error "the replay client did not answer: $1 $2"
}

# same KEY WHAT RECORDED: compare the last answer with what the run saw.
same() {
    local now=${ANSWER#ok }
    [[ $ANSWER == gone* ]] && now=gone  # how the connection broke is not compared
    CHECKED=$((CHECKED + 1))
    [[ $1 == key ]] && KEY_CHECKED=$((KEY_CHECKED + 1))
    if [[ $now == "$3" ]]; then
        say "   same as in the run: $now"
        return 0
    fi
    say "   DIFFERS from the run: $2: now '$now', in the run '$3'"
    DIFFS+=("$2: now '$now', in the run '$3'")
    [[ $1 == key ]] && KEY_DIFFS+=("$2: now '$now', in the run '$3'")
    return 0
}

# start NAME [ADDR=FD...] -- COMMAND: in the background, dying with this script; an
# ADDR=FD socket is bound and listening on fd FD before COMMAND runs (the run's inherited one).
start() {
    local name=$1 listen=()
    shift
    while [[ $1 != -- ]]; do listen+=("$1"); shift; done
    shift
    say "\$ $*"
    if ((${#listen[@]})); then
        setpriv --pdeathsig KILL -- "$PYTHON" "$W/replay_client.py" listen "${listen[@]}" -- "$@" \
            >"$W/$name.stdout" 2>"$W/$name.stderr" </dev/null &
    else
        setpriv --pdeathsig KILL -- "$@" >"$W/$name.stdout" 2>"$W/$name.stderr" </dev/null &
    fi
    PID[$name]=$!
    PIDS+=("$!")
}

# wait_mntns NAME: until NAME runs in a mount namespace of its own (bounded).
wait_mntns() {
    local i
    for ((i = 0; i < ${QMP_TIMEOUT%.*} * 100; i++)); do
        [[ $(readlink "/proc/${PID[$1]}/ns/mnt") != "$(readlink /proc/self/ns/mnt)" &&
           $(cat "/proc/${PID[$1]}/comm" 2>/dev/null) == sleep ]] && return 0
        sleep 0.01
    done
    setup_error "$1 did not enter its mount namespace"
}

connect() { ask connect "$2" "$3"; say "   QMP $2: ${ANSWER#ok }"; same "$1" "$2: QMP greeting" connected; }

# qmp KEY PEER JSON / qmp_fd KEY PEER ADDR JSON: send a command ($W in JSON is this
# script's temp dir); qmp_fd passes a listening socket on ADDR along (SCM_RIGHTS).
qmp() { local msg=${3//'$W'/$W}; say "-> $2: $msg"; ask send "$2" "$msg"; say "<- ${ANSWER#ok }"; }
qmp_fd() { local msg=${4//'$W'/$W}; say "-> $2: $msg (with a listening socket on $3)"; ask sendfd "$2" "$3" "$msg"; say "<- ${ANSWER#ok }"; }

# event KEY PEER NAME [STATUS]: wait for an event the run got before its next command.
event() { ask event "$2" "$3" "${4:-}"; say "<- $2: event ${ANSWER#ok }"; same "$1" "$2: event $3${4:+ $4}" "$3"; }

# observe KEY fds|locks PEER PATH RECORDED: what /proc says of PEER's fds on PATH.
observe() { ask "$2" "${PID[$3]}" "$4"; say "   $3 $2 on ${4#"$W"/}: ${ANSWER#ok }"; same "$1" "$3 $2 on ${4#"$W"/}" "$5"; }

# exits KEY NAME RECORDED: NAME ends (bounded wait); its status and last stderr line.
exits() {
    local i status=0 state last
    for ((i = 0; i < ${QMP_TIMEOUT%.*} * 10; i++)); do
        state=$(awk '{print $3}' "/proc/${PID[$2]}/stat" 2>/dev/null) || break
        [[ $state == Z ]] && break
        sleep 0.1
    done
    if [[ $state == Z || ! -e /proc/${PID[$2]} ]]; then
        wait "${PID[$2]}" || status=$?
        last=$(grep -v '^\s*$' "$W/$2.stderr" | tail -n 1)
        last=${last//$W/'$W'}
        if ((status > 128)); then
            ANSWER="killed by $(kill -l $((status - 128)) | sed 's/^/SIG/')${last:+: $last}"
        else
            ANSWER="exit status $status${last:+: $last}"
        fi
    else
        ANSWER="still running"
    fi
    say "   $2: ${ANSWER}"
    same "$1" "$2: how it ended" "$3"
}

# tool KEY RECORDED COMMAND: a qemu-img / qemu-io run (bounded); exit status and stderr.
tool() {
    local rc=0 err key=$1 recorded=$2
    shift 2
    say "\$ $*"
    timeout -k 5 60 "$@" >"$W/tool.stdout" 2>"$W/tool.stderr" || rc=$?
    err=$(<"$W/tool.stderr")
    err=${err//$W/'$W'}
    err=${err//$'\n'/ | }
    ANSWER="exit $rc${err:+: $err}"
    say "   ${ANSWER}"
    same "$key" "$(basename "$1") run" "$recorded"
}

# run COMMAND: a set-up step (image, storage); it must work.
run() { say "\$ $*"; timeout -k 5 60 "$@" || setup_error "set-up step failed: $*"; }

# verdict DEVIATION: the last line (the run's deviation, for REPRODUCED).
verdict() {
    local d
    for d in "${DIFFS[@]}"; do
        [[ " ${KEY_DIFFS[*]} " == *" $d "* ]] || say "note: before the deviation, $d"
    done
    ((CHECKED)) || setup_error "nothing to compare"
    if ((${#KEY_DIFFS[@]})); then
        say "NOT REPRODUCED: ${KEY_DIFFS[*]}"
        exit 1
    fi
    say "REPRODUCED: $1 (QEMU did as in the run at all $KEY_CHECKED steps of the deviation${DIFFS[*]:+; some earlier steps differ, see the notes})"
    exit 0
}

coproc REPLAY { exec "$PYTHON" "$W/replay_client.py"; }
REPLAY_PID=$REPLAY_PID
ask hello
[[ $ANSWER == "ok ready" ]] || setup_error "the replay client does not work: $ANSWER"
