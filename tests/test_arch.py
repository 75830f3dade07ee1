"""Builds of another target: real suite cases on an aarch64 build next to x86_64, in one run.

Debian's qemu-system-arm ships qemu-system-aarch64 beside the x86_64 one in
/usr/bin, so ``--qemu-build v7.2=/ --qemu-build v7.2=/:aarch64`` is the same
QEMU for two targets: every case must end the same on both, the aarch64 ids
carry the arch, and the aarch64 cases start only qemu-system-aarch64 (the
device cases on ``-M virt``). Bad arch input is one line, exit 4.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import write_script

ROOT = Path(__file__).resolve().parents[1]
AARCH64 = shutil.which("qemu-system-aarch64")
needs_aarch64 = pytest.mark.skipif(AARCH64 is None, reason="needs qemu-system-aarch64 "
                                   "(Debian package qemu-system-arm; scripts/setup.sh installs it)")

#: one or more cases of each scenario the arch could matter to; the build's id goes first
CASES = [
    "test_open.py::test_open[{b}file-rw-proto-blockdev-ro_off-aro_on]",
    "test_open.py::test_open[{b}file-erofs-qcow2-drive-ro_off-aro_on]",
    "test_degrade.py::test_degraded_node_refuses_writers_and_serves_reads"
    "[{b}file-erofs-proto-blockdev-ro_off-aro_on]",
    "test_reopen.py::test_reopen_and_back[{b}file-rw-proto-ro_off-aro_on-to_rw-aro_on]",
    "test_dynamic.py::test_dynamic[{b}file-rw-raw-scsi-hd]",
    "test_dynamic.py::test_dynamic[{b}file-rw-raw-virtio-blk]",
    "test_dynamic.py::test_dynamic[{b}file-rw-raw-export+virtio-blk-share]",
    "test_dynamic.py::test_dynamic[{b}file-erofs-raw-virtio-blk-refused]",
    "test_dynamic.py::test_dynamic[{b}file-rw-qcow2-scsi-cd]",
    "test_jobs.py::test_job[{b}file-rw-chain-active-commit-complete]",
    "test_jobs.py::test_job[{b}file-erofs-chain-stream]",
]
BUILDS = {"v7.2-": "qemu-system-x86_64", "v7.2-aarch64-": "qemu-system-aarch64"}


@pytest.fixture
def suites(inner):
    """A copy of the project's suites (their conftest registers the scenario markers)."""
    shutil.copytree(ROOT / "suites", inner.path / "suites", ignore=shutil.ignore_patterns("__pycache__"))
    inner.ini(qemublock=False)
    return inner


@needs_aarch64
def test_suite_cases_pass_on_aarch64_next_to_x86_64(suites):
    ids = [f"suites/{c.format(b=b)}" for c in CASES for b in BUILDS]
    r = suites.run(*ids, "-n", "2", "-p", "no:cacheprovider", "--qemu-build", "v7.2=/",
                   "--qemu-build", "v7.2=/:aarch64", "--qb-results", "r.json", timeout=300)

    assert r.ret == 0, r.stdout.str()[-4000:]
    r.stdout.fnmatch_lines(["qemu build 'v7.2': QEMU *", "  arch * x86_64 (device cases on -M pc)",
                            "qemu build 'v7.2-aarch64': QEMU *",
                            "  arch * aarch64 (device cases on -M virt)",
                            "builds: v7.2 = QEMU *, v7.2-aarch64 = QEMU * for aarch64"])
    results = json.loads((suites.path / "r.json").read_text())
    assert results["build_order"] == ["v7.2", "v7.2-aarch64"]
    assert results["builds"]["v7.2-aarch64"]["arch"] == "aarch64"
    tests = results["tests"]
    assert sorted(tests) == sorted(ids)
    for case in CASES:
        x86, arm = (tests[f"suites/{case.format(b=b)}"] for b in BUILDS)
        assert arm["outcome"] == x86["outcome"] and arm["outcome"] in ("passed", "xfailed"), (case, x86, arm)
        assert (x86["build"], arm["build"]) == ("v7.2", "v7.2-aarch64")
        # each build started its own target's QEMU, and only that one
        for res, system in ((x86, "qemu-system-x86_64"), (arm, "qemu-system-aarch64")):
            started = {p for p in res["procs"] if p.startswith("qemu-system-")}
            assert started == {system}, (case, res["procs"])


@needs_aarch64
def test_a_lone_aarch64_build_has_the_arch_in_its_ids(suites):
    """The default build made aarch64 by --qemu-system: its ids start with ``aarch64-``;
    a lone x86_64 build keeps ids without a build part."""
    r = suites.run("suites/test_dynamic.py", "--co", "-q", f"--qemu-system={AARCH64}")
    assert r.ret == 0, r.stdout.str()[-2000:]
    r.stdout.fnmatch_lines(["suites/test_dynamic.py::test_dynamic[[]aarch64-file-rw-raw-export[]]"])
    r = suites.run("suites/test_dynamic.py", "--co", "-q", "--qemu-build=v7.2=/:x86_64")
    assert r.ret == 0, r.stdout.str()[-2000:]
    r.stdout.fnmatch_lines(["suites/test_dynamic.py::test_dynamic[[]file-rw-raw-export[]]"])


@pytest.mark.parametrize(("args", "line"), [
    (["--qemu-build=v7.2=/:sparc99"],
     "ERROR: qemublock: --qemu-build 'v7.2=/:sparc99': unknown arch 'sparc99' (known: aarch64, x86_64)"),
    (["--qb-arch=arm"], "ERROR: qemublock: --qb-arch: unknown arch 'arm' (known: aarch64, x86_64)"),
    (["--qb-arch=aarch64", "--qemu-system=/usr/bin/qemu-system-x86_64"],
     "ERROR: qemublock: qemu-system-x86_64 from option --qemu-system is an x86_64 QEMU, "
     "but --qb-arch says aarch64"),
], ids=["build-spec", "qb-arch", "qb-arch-clash"])
def test_bad_arch_is_one_line(inner, args, line):
    inner.suite("def test_build(qemu_build):\n    pass\n")
    r = inner.run(*args)
    assert r.ret == 4
    assert [ln for ln in r.stderr.lines if ln] == [line], r.stderr.str()


@needs_aarch64
def test_a_qemu_of_another_arch_than_taken_is_one_line(inner):
    """A wrapper's name says no arch, so the build is taken as x86_64; the probe asks QEMU
    (query-target) and refuses the run instead of starting -M pc on an aarch64 QEMU."""
    wrapper = write_script(inner.path / "bin" / "qemu-wrapped", f'exec {AARCH64} "$@"\n')
    inner.suite("def test_caps(qemu_caps):\n    pass\n")
    r = inner.run(f"--qemu-system={wrapper}", "-p", "no:cacheprovider")
    assert r.ret == 4
    assert [ln for ln in r.stderr.lines if ln] == [
        f"ERROR: qemublock: build default: {wrapper} is a QEMU for aarch64 (QMP query-target), "
        "not x86_64: choose the arch with --qb-arch aarch64 or --qemu-build DIR:aarch64"], r.stderr.str()
