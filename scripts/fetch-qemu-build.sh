#!/usr/bin/env bash
# Fetch a QEMU 10.0 build from Debian bookworm-backports into a private cache
# directory, without installing anything system-wide.
#
# Usage: scripts/fetch-qemu-build.sh [DEST]
#   DEST defaults to $QEMUBLOCK_CACHE/qemu-10.0; QEMUBLOCK_CACHE defaults to
#   /var/cache/pytest-qemublock for root (the eacces storage runs QEMU as uid
#   65534, which cannot reach binaries below root's 0700 home) and to
#   ~/.cache/pytest-qemublock for everybody else.
#
# Environment:
#   QEMU_BACKPORTS_VERSION  exact Debian version to fetch (e.g.
#                           1:10.0.2+ds-2+deb13u1~bpo12+1); default: the newest
#                           1:10.0.* in bookworm-backports.
#   QEMU_BACKPORTS_MIRROR   Debian mirror URI; default: the one that the system
#                           apt sources use for bookworm.
#
# The last line of stdout is DEST; everything else goes to stderr, so callers
# can do: d=$(scripts/fetch-qemu-build.sh | tail -n1)
#
# Using the result: run DEST/usr/bin/* with
#   QEMU_MODULE_DIR=DEST/usr/lib/x86_64-linux-gnu/qemu
# Without it, the binaries look in the system module directory and fail to
# load the (7.2) block modules there ("Only modules from the same build can be
# loaded"). The binaries also have /usr/share/qemu compiled in as their data
# directory; pass -L DEST/usr/share/qemu to qemu-system-x86_64 when a machine
# type needs ROMs from this build.
set -euo pipefail

readonly PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data qemu-utils qemu-block-extra)
# qemu-storage-daemon ships in qemu-utils in this release, not in a package of
# its own.
readonly BINARIES=(qemu-system-x86_64 qemu-img qemu-io qemu-nbd qemu-storage-daemon)
readonly BASE_SUITE=bookworm
readonly SUITE=${BASE_SUITE}-backports
readonly MODULE_SUBDIR=usr/lib/x86_64-linux-gnu/qemu
readonly STAMP=.complete

prog=${0##*/}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

log() {
    printf '%s: %s\n' "$prog" "$*" >&2
}

if [[ $(id -u) -eq 0 ]]; then default_cache=/var/cache/pytest-qemublock
else default_cache=$HOME/.cache/pytest-qemublock; fi
dest=${1:-${QEMUBLOCK_CACHE:-$default_cache}/qemu-10.0}
# Strip trailing slashes so "$dest.tmp.$$" is a sibling, not a child: the final
# rename is only atomic within one file system.
while [[ $dest == */ && $dest != / ]]; do dest=${dest%/}; done
[[ -n $dest && $dest != / ]] || die "invalid destination '$dest'"
# Absolute, because the download step changes directory and callers may cd.
[[ $dest == /* ]] || dest=$PWD/$dest
pin=${QEMU_BACKPORTS_VERSION:-}

# True if the stamp lists every package, and (when a version is pinned) each
# at that version.
stamp_ok() {
    local stamp=$1/$STAMP pkg p ver found
    [[ -f $stamp ]] || return 1
    for pkg in "${PACKAGES[@]}"; do
        found=
        while read -r p ver; do
            [[ $p == "$pkg" ]] || continue
            if [[ -z $pin || $ver == "$pin" ]]; then found=1; fi
        done <"$stamp"
        [[ -n $found ]] || return 1
    done
}

# Fast path: must stay cheap and offline, the test suite calls it every run.
if stamp_ok "$dest"; then
    printf '%s\n' "$dest"
    exit 0
fi

for tool in apt-get apt-cache dpkg dpkg-deb; do
    command -v "$tool" >/dev/null || die "'$tool' not found; this script needs a Debian-based system"
done

parent=$(dirname -- "$dest")
mkdir -p -- "$parent" || die "cannot create '$parent'"
if [[ -e $dest && ! -d $dest ]]; then
    die "'$dest' exists and is not a directory"
fi
if [[ -d $dest && ! -f $dest/$STAMP ]] && [[ -n $(ls -A -- "$dest") ]]; then
    # Not something this script produced (it never leaves a DEST without a
    # stamp), so don't risk deleting someone's data.
    die "'$dest' exists, is not empty and has no $STAMP stamp; remove it or choose another DEST"
fi

# Left-overs of runs that were killed too hard for their EXIT trap to run.
for stale in "$dest".tmp.* "$dest".apt.* "$dest".old.*; do
    [[ -d $stale ]] || continue
    pid=${stale##*.}
    [[ $pid =~ ^[0-9]+$ ]] || continue
    # /proc rather than kill -0, which also fails for another user's live run.
    if [[ ! -e /proc/$pid ]]; then
        log "removing stale $stale"
        rm -rf -- "$stale"
    fi
done

# apt's private state and the downloaded .debs live next to DEST rather than
# in /tmp, so the stale-run sweep above also reclaims them after a SIGKILL.
work=$dest.apt.$$
staging=$dest.tmp.$$
cleanup() {
    rm -rf -- "$work" "$staging"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
rm -rf -- "$work" "$staging"
mkdir -m 700 -- "$work"

# Print "URI SIGNED-BY" (SIGNED-BY may be empty) for every enabled "deb" entry
# of the system sources that carries $BASE_SUITE, in apt's reading order.
list_system_mirrors() {
    local f line opts signed uri suite types uris suites enabled key val
    local -a uri_list
    local one_line_re='^[[:space:]]*deb[[:space:]]+(\[([^]]*)\][[:space:]]+)?([^[:space:]]+)[[:space:]]+([^[:space:]]+)'
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        while IFS= read -r line || [[ -n $line ]]; do
            line=${line%%#*}
            [[ $line =~ $one_line_re ]] || continue
            opts=${BASH_REMATCH[2]} uri=${BASH_REMATCH[3]} suite=${BASH_REMATCH[4]}
            [[ $suite == "$BASE_SUITE" ]] || continue
            signed=
            if [[ $opts =~ signed-by=([^[:space:]]+) ]]; then signed=${BASH_REMATCH[1]}; fi
            printf '%s %s\n' "$uri" "$signed"
        done <"$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        types='' uris='' suites='' signed='' enabled=yes
        while true; do
            line=
            IFS= read -r line || [[ -n $line ]] || line=$'\x04'
            if [[ $line == $'\x04' || -z ${line//[[:space:]]/} ]]; then
                # End of a stanza.
                if [[ ${enabled,,} != no && " $types " == *" deb "* && " $suites " == *" $BASE_SUITE "* ]]; then
                    read -ra uri_list <<<"$uris"
                    for uri in "${uri_list[@]}"; do printf '%s %s\n' "$uri" "$signed"; done
                fi
                types='' uris='' suites='' signed='' enabled=yes
                [[ $line == $'\x04' ]] && break
                continue
            fi
            # Comments, and continuation lines (an inline Signed-By key block).
            [[ $line == \#* || $line =~ ^[[:space:]] || $line != *:* ]] && continue
            key=${line%%:*} val=${line#*:}
            val=${val#"${val%%[![:space:]]*}"} val=${val%"${val##*[![:space:]]}"}
            case ${key,,} in
                types) types=$val ;;
                uris) uris=$val ;;
                suites) suites=$val ;;
                enabled) enabled=$val ;;
                # Only a key file can be reused; an inline key is dropped and
                # apt falls back to /etc/apt/trusted.gpg.d.
                signed-by) if [[ $val == /* ]]; then signed=$val; fi ;;
                *) ;;
            esac
        done <"$f"
    done
}

signed_by=
if [[ -n ${QEMU_BACKPORTS_MIRROR:-} ]]; then
    mirror=$QEMU_BACKPORTS_MIRROR
else
    read -r mirror signed_by < <(list_system_mirrors) || true
    [[ -n ${mirror:-} ]] || die "no '$BASE_SUITE' deb entry found in /etc/apt/sources.list or /etc/apt/sources.list.d/; set QEMU_BACKPORTS_MIRROR"
fi
log "using $SUITE from $mirror"

mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/state" "$work/debs"
if [[ -n $signed_by ]]; then
    printf 'deb [signed-by=%s] %s %s main\n' "$signed_by" "$mirror" "$SUITE" >"$work/sources.list"
else
    printf 'deb %s %s main\n' "$mirror" "$SUITE" >"$work/sources.list"
fi

# Every piece of state apt reads or writes points into $work, so the system's
# lists, caches, pins and dpkg status neither change nor influence the choice.
# apt.conf itself is kept so proxy settings still apply. The sandbox user is
# disabled because _apt cannot write into our private (root-owned) dirs; it
# has no effect when not running as root.
apt_opts=(
    -o "Dir::Etc::SourceList=$work/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "Dir::State=$work/state"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::State::status=/dev/null"
    -o "Dir::Cache=$work/cache"
    -o "APT::Sandbox::User=root"
)

# Run a command quietly; on failure show its output and the given message.
run_logged() {
    local what=$1
    shift
    if ! "$@" >"$work/cmd.log" 2>&1; then
        cat "$work/cmd.log" >&2
        die "$what failed"
    fi
}

run_logged "apt-get update of $SUITE from $mirror" \
    apt-get -q "${apt_opts[@]}" update
# apt-get update only warns about unreachable or unsigned repositories.
if grep -E '^(W|E): ' "$work/cmd.log" >&2; then
    die "apt-get update of $SUITE from $mirror reported problems (see above)"
fi

if [[ -n $pin ]]; then
    version=$pin
else
    version=
    while IFS='|' read -r _ v _; do
        v=${v//[[:space:]]/}
        [[ $v == 1:10.0.* ]] || continue
        if [[ -z $version ]] || dpkg --compare-versions "$v" gt "$version"; then
            version=$v
        fi
    done < <(apt-cache "${apt_opts[@]}" madison qemu-system-x86)
    [[ -n $version ]] || die "no 1:10.0.* version of qemu-system-x86 in $SUITE at $mirror"
fi
log "fetching QEMU $version"

pkg_specs=()
for pkg in "${PACKAGES[@]}"; do pkg_specs+=("$pkg=$version"); done
# apt-get download writes into the current directory.
cd -- "$work/debs"
run_logged "apt-get download of ${pkg_specs[*]}" \
    apt-get -q "${apt_opts[@]}" download "${pkg_specs[@]}"
cd - >/dev/null

mkdir -- "$staging"
: >"$work/versions"
for deb in "$work"/debs/*.deb; do
    run_logged "dpkg -x $deb" dpkg -x "$deb" "$staging"
    printf '%s %s\n' "$(dpkg-deb -f "$deb" Package)" "$(dpkg-deb -f "$deb" Version)" >>"$work/versions"
done

# Verification runs on the staging tree, so DEST never holds an unverified
# build.
verify() {
    local root=$1 bin out mod drv
    local moddir=$root/$MODULE_SUBDIR
    local upstream=${version#*:}
    upstream=${upstream%%[+-]*}
    for bin in "${BINARIES[@]}"; do
        [[ -x $root/usr/bin/$bin ]] || die "verification: $bin missing from the unpacked packages"
        out=$("$root/usr/bin/$bin" --version 2>&1) || die "verification: $bin --version failed: $out"
        # Also guards against picking up a system binary of a different build.
        [[ $out == *" $upstream "* && $out == *"$version"* ]] ||
            die "verification: $bin --version does not report $version: $out"
    done
    # "qemu-img --help" lists module drivers even when the module cannot be
    # loaded, so actually open each one: a loaded driver complains about
    # missing options, a missing one says "Unknown driver".
    for mod in curl ssh iscsi; do
        [[ -f $moddir/block-$mod.so ]] || die "verification: block module $mod missing from $moddir"
    done
    for mod in "$moddir"/block-*.so; do
        mod=${mod##*/block-}
        mod=${mod%.so}
        case $mod in
            curl) drv=http ;;
            *) drv=$mod ;;
        esac
        out=$(QEMU_MODULE_DIR=$moddir "$root/usr/bin/qemu-img" info --image-opts "driver=$drv" 2>&1) || true
        if [[ $out == *"Unknown driver"* || $out == *"failed to open module"* ||
            $out == *"failed to initialize module"* || $out == *"same build"* ]]; then
            die "verification: block module $mod does not load: $out"
        fi
    done
}
verify "$staging"
cp -- "$work/versions" "$staging/$STAMP"

# Move a complete older build aside rather than deleting it first, so DEST is
# only ever missing for the instant between the two renames.
old=
if [[ -d $dest && -f $dest/$STAMP ]]; then
    old=$dest.old.$$
    mv -T -- "$dest" "$old"
elif [[ -d $dest ]]; then
    rmdir -- "$dest"
fi
if ! mv -T -- "$staging" "$dest" 2>/dev/null; then
    # A concurrent run may have won the race; its result is as good as ours.
    stamp_ok "$dest" || die "cannot move $staging to $dest"
    log "another run already populated $dest"
fi
[[ -z $old ]] || rm -rf -- "$old"

log "QEMU $version ready in $dest"
printf '%s\n' "$dest"
