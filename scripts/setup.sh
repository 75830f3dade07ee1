#!/usr/bin/env bash
# Set up everything pytest-qemublock needs on a fresh Debian 12 machine (as root).
#
#   bash scripts/setup.sh            apt packages, .venv with the plugin installed (extra: dev)
#   bash scripts/setup.sh --qemu-10  also fetch QEMU 10.0 (bookworm-backports) into
#                                    /var/cache/pytest-qemublock/qemu-10.0, not installed
#
# Idempotent: a second run only checks. Nothing is started; fixtures start and
# stop every server themselves.
set -euo pipefail

cd "$(dirname "$0")/.."

# QEMU under test and its tools, the protocol servers the backends use, and the
# host tools the storage providers need (unshare/nsenter/setpriv, mount, ss, ps);
# systemd for systemd-socket-activate, which runs sshd -i on our own listener.
APT_PACKAGES=(
    qemu-system-x86 qemu-utils qemu-block-extra
    qemu-system-arm
    # qemu-system-arm: qemu-system-aarch64, the second target the suites run on (.ci/run)
    nbdkit nginx-light openssh-server openssh-client openssh-sftp-server systemd tgt
    util-linux mount iproute2 procps python3-venv
    jq
    # jq: the plain-QEMU reproducers in docs/known-bugs/ parse QMP with it
    chromium
    # chromium: tests/test_html.py renders the --qb-html report headless and checks its DOM
)

want_qemu10=0
for arg in "$@"; do
    case $arg in
        --qemu-10) want_qemu10=1 ;;
        *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup.sh: installing ${missing[*]}" >&2
    apt-get update -q >&2
    # Servers are run by the fixtures, never as system services.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

# The unprivileged uid tests/test_nonroot.py runs the suites as (a developer's run).
if ! getent passwd qbtest >/dev/null; then
    useradd --system --no-create-home --user-group --shell /usr/sbin/nologin qbtest >&2
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi
# The runtime dependencies and the dev extra (build for tests/test_wheel.py,
# mypy and ruff for scripts/check.sh); pip runs only when one is missing.
if ! .venv/bin/python -c 'import pytest_qemublock, xdist, qemu.qmp, testinfra, psutil, build, mypy, importlib.util as u; assert u.find_spec("psutil-stubs")' 2>/dev/null \
        || [[ ! -x .venv/bin/ruff ]]; then
    .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' >&2
fi

if ((want_qemu10)); then
    scripts/fetch-qemu-build.sh >&2
fi
echo "setup.sh: ready (.venv/bin/pytest)" >&2
