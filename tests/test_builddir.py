"""A QEMU source build tree, used as it is (``--qemu-build-dir ~/qemu/build``).

The tree is laid out like a meson build directory of an ``--enable-modules``
build, made from the unpacked QEMU 10.0 (see pytest_qemublock/qemu/buildtree.py
for the QEMU functions that decide each place):

* binaries at the top, qemu-storage-daemon in ``storage-daemon/``; hard links
  (copies across file systems), not symlinks: ``qemu_init_exec_dir()`` reads
  ``/proc/self/exe``, which names a symlink's target, not the tree;
* ``block-*.so`` at the top, where meson's ``shared_module()`` builds them;
* firmware in ``pc-bios/`` (the source tree's blobs; Debian ships the BIOS in
  the seabios package, so its ``bios-256k.bin`` stands in for QEMU's);
* ``qemu-bundle/<install path>`` symlinks to both, as
  scripts/symlink-install-tree.py makes them; the install paths are those
  compiled into these binaries (prefix ``/usr``; a default build has ``/usr/local``).

The first test checks that QEMU itself takes the tree for a build tree.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import QEMU10_DIR, REAL, assert_no_leak, binary_line, header_line
from pytest_qemublock.qemu.build import BINARIES

ROOT = Path(__file__).resolve().parent.parent
TRIPLET_MODDIR = "usr/lib/x86_64-linux-gnu/qemu"
SEABIOS = Path("/usr/share/seabios")
BUNDLE_DATA = "qemu-bundle/usr/share/qemu"
BUNDLE_MODULES = f"qemu-bundle/{TRIPLET_MODDIR}"
HOME = {"qemu-storage-daemon": "storage-daemon"}


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def make_meson_tree(tree: Path, source: Path, symlinks: bool = False) -> Path:
    """A meson-like build tree at *tree* from the ``dpkg -x`` root *source*; with *symlinks*
    its binaries are symlinks to *source*'s (QEMU then finds no qemu-bundle by itself)."""
    for spec in BINARIES:
        src, dst = source / "usr/bin" / spec.filename, tree / HOME.get(spec.filename, "") / spec.filename
        if symlinks:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
        else:
            _place(src, dst)
    for mod in sorted((source / TRIPLET_MODDIR).glob("block-*.so")):
        _place(mod, tree / mod.name)
        link = tree / BUNDLE_MODULES / mod.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(tree / mod.name)
    shutil.copytree(source / "usr/share/qemu", tree / "pc-bios")
    for blob in SEABIOS.glob("*.bin"):
        shutil.copy2(blob, tree / "pc-bios" / blob.name)
    (tree / BUNDLE_DATA).mkdir(parents=True)
    for f in sorted((tree / "pc-bios").iterdir()):
        (tree / BUNDLE_DATA / f.name).symlink_to(f)
    return tree


def _need_sources() -> None:
    if not (QEMU10_DIR / "usr/bin/qemu-system-x86_64").is_file():
        pytest.skip(f"no QEMU 10.0 build at {QEMU10_DIR} (scripts/fetch-qemu-build.sh; "
                    f"or set QB_TEST_QEMU10)")
    if not (SEABIOS / "bios-256k.bin").is_file():
        pytest.skip(f"no {SEABIOS}/bios-256k.bin for the tree's pc-bios/ (Debian package seabios)")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need_sources()
    return make_meson_tree(tmp_path_factory.mktemp("qemu") / "build", QEMU10_DIR).resolve()


@pytest.fixture(scope="module")
def symlinked_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _need_sources()
    return make_meson_tree(tmp_path_factory.mktemp("qemu") / "build", QEMU10_DIR, symlinks=True).resolve()


def test_qemu_takes_the_tree_for_a_build_tree(tree):
    """Guards the fixture: the binary's own data dirs are the tree's qemu-bundle, and
    qemu-storage-daemon, one level down, would load the installed QEMU's modules."""
    res = subprocess.run([tree / "qemu-system-x86_64", "-L", "help"], capture_output=True, text=True,
                         timeout=20, check=True, env={})
    assert res.stdout.splitlines()[0] == str(tree / BUNDLE_DATA), res.stdout
    res = subprocess.run([tree / "storage-daemon/qemu-storage-daemon", "--blockdev",
                          "driver=ssh,node-name=s,server.host=127.0.0.1,server.port=9,path=/p"],
                         capture_output=True, text=True, timeout=20, env={}, check=False)
    assert "Unknown driver 'ssh'" in res.stderr, res.stderr


TREE_SUITE = r'''
import re
from pathlib import Path

TREE = Path(__file__).parent / "tree-path"


def test_tree_modules_and_firmware(qemu, qemu_caps, tmp_path):
    tree = TREE.read_text()
    # the probe (qemu-system) loaded the tree's block-curl.so, block-ssh.so, block-iscsi.so
    unloaded = [d for d in ("http", "ssh", "iscsi") if not qemu_caps.driver_loads(d)]
    assert unloaded == [], qemu_caps.driver_errors
    # so does qemu-storage-daemon from storage-daemon/: the driver loads, the server is absent
    qsd = qemu.start_qsd()
    err = qsd.execute_error("blockdev-add", {"driver": "ssh", "node-name": "s", "path": "/p",
                                             "server": {"host": "127.0.0.1", "port": "9"}})
    assert err is not None and "Failed to connect" in err.desc, err
    # -M pc loads its BIOS (and option ROMs) from the tree
    log = tmp_path / "trace.log"
    vm = qemu.start("-trace", "load_file", "-D", str(log), machine="pc")
    vm.execute("query-status")
    loaded = re.findall(r"load_file name (\S+) location (\S+)", log.read_text())
    assert ("bios-256k.bin", f"{tree}/qemu-bundle/usr/share/qemu/bios-256k.bin") in loaded, loaded
    assert [p for _, p in loaded if not p.startswith(tree + "/")] == [], loaded
'''


def _header(r: pytest.RunResult, tree: Path, source: str) -> None:
    r.stdout.re_match_lines([
        rf"qemu build '\S+': QEMU 10\.0\.\d+ \(QEMU_MODULE_DIR={re.escape(str(tree / BUNDLE_MODULES))}\)$",
        rf"  firmware, data +-L {re.escape(str(tree / BUNDLE_DATA))}$"])
    for spec in BINARIES:
        where = tree / HOME.get(spec.filename, "") / spec.filename
        assert header_line(r.outlines, spec.role) == binary_line(spec.role, where, source)


@pytest.mark.parametrize("option, which", [("--qemu-build-dir", "tree"), ("--qemu-build", "tree"),
                                           ("--qemu-build-dir", "symlinked_tree")])
def test_build_tree_just_works(inner, request, option, which):
    """Every binary, block module and firmware file of the run comes from the tree, also
    when its binaries are symlinks whose own directory has no qemu-bundle."""
    tree = request.getfixturevalue(which)
    inner.suite(TREE_SUITE)
    (inner.path / "tree-path").write_text(str(tree))
    arg, source = ((f"--qemu-build-dir={tree}", f"--qemu-build-dir {tree}") if option == "--qemu-build-dir"
                   else (f"--qemu-build=tree={tree}", "--qemu-build tree"))

    r = inner.run(arg, "-v")

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.assert_outcomes(passed=1)
    _header(r, tree, source)
    assert_no_leak(inner)


#: real suite cases: qemu-storage-daemon with block-curl.so, qemu-system with block-ssh.so,
#: qemu-nbd, and a hot-plug on -M pc (the BIOS)
SUITE_CASES = (
    "suites/test_open.py::test_open[http-ro-proto-qsd-ro_on-aro_on]",
    "suites/test_open.py::test_open[ssh-ro-proto-blockdev-ro_on-aro_on]",
    "suites/test_open.py::test_open[nbd-qemu-nbd-unix-ro-proto-blockdev-ro_on-aro_on]",
    "suites/test_dynamic.py::test_dynamic[file-rw-raw-scsi-hd]",
)


@pytest.mark.parametrize("option", ["--qemu-build-dir", "--qemu-build"])
def test_suite_cases_pass_on_the_tree(inner, tree, option):
    shutil.copytree(ROOT / "suites", inner.path / "suites", ignore=shutil.ignore_patterns("__pycache__"))
    arg = f"--qemu-build-dir={tree}" if option == "--qemu-build-dir" else f"--qemu-build=tree={tree}"

    r = inner.run(arg, *SUITE_CASES, "-v", timeout=300)

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.assert_outcomes(passed=len(SUITE_CASES))
    assert_no_leak(inner)


# -- a tree that lacks a binary, and the mixing rule ------------------------------------


@pytest.fixture
def tree_without_nbd(tmp_path: Path) -> Path:
    """A meson-like tree of the installed QEMU (symlinks will do: only resolution runs) without qemu-nbd."""
    t = tmp_path / "build"
    for spec in BINARIES:
        if spec.role != "nbd":
            dst = t / HOME.get(spec.filename, "") / spec.filename
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(REAL[spec.role])
    return t.resolve()


@pytest.mark.parametrize("option", ["--qemu-build-dir", "--qemu-build"])
def test_missing_binary_is_one_line_naming_it(inner, tree_without_nbd, option):
    t = tree_without_nbd
    inner.suite()
    if option == "--qemu-build-dir":
        r = inner.run(f"--qemu-build-dir={t}")
        what, ways = f"QEMU build directory {t}", "build it there, pass --qemu-nbd PATH, or pass"
    else:
        r = inner.run(f"--qemu-build=tree={t}")
        what, ways = f"--qemu-build tree: {t}", "build it there or pass"

    assert r.ret == pytest.ExitCode.USAGE_ERROR, r.stdout.str() + r.stderr.str()
    assert [line for line in r.errlines if line.strip()] == [
        f"ERROR: qemublock: {what} (meson build tree) has no qemu-nbd (expected {t}/qemu-nbd): "
        f"{ways} --qb-allow-mixed-build to take it from PATH"]
    assert not inner.basetemp.exists()


@pytest.mark.parametrize("option", ["--qemu-build-dir", "--qemu-build"])
def test_mixing_only_when_asked_for(inner, tree_without_nbd, option):
    """--qb-allow-mixed-build takes what the tree lacks from PATH, and the header says so."""
    t = tree_without_nbd
    inner.suite()
    arg = f"--qemu-build-dir={t}" if option == "--qemu-build-dir" else f"--qemu-build=tree={t}"

    r = inner.run(arg, "--qb-allow-mixed-build")

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.assert_outcomes(passed=1)
    assert header_line(r.outlines, "nbd") == binary_line(
        "nbd", REAL["nbd"], "PATH, mixed in by --qb-allow-mixed-build")
    source = f"--qemu-build-dir {t}" if option == "--qemu-build-dir" else "--qemu-build tree"
    assert header_line(r.outlines, "img") == binary_line("img", t / "qemu-img", source)


def test_explicit_tool_option_is_asked_for(inner, tree_without_nbd):
    """A per-binary option is explicit by itself: no refusal, no --qb-allow-mixed-build needed."""
    t = tree_without_nbd
    inner.suite()

    r = inner.run(f"--qemu-build-dir={t}", f"--qemu-nbd={REAL['nbd']}")

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    assert header_line(r.outlines, "nbd") == binary_line("nbd", REAL["nbd"], "option --qemu-nbd")


QSD_SSH_SUITE = r'''
def test_each_binary_loads_its_own_builds_modules(qemu, qemu_caps):
    # qemu-system from PATH probed its own block-ssh.so; qsd from the tree loads the tree's
    assert qemu_caps.driver_loads("ssh"), qemu_caps.driver_errors
    qsd = qemu.start_qsd()
    err = qsd.execute_error("blockdev-add", {"driver": "ssh", "node-name": "s", "path": "/p",
                                             "server": {"host": "127.0.0.1", "port": "9"}})
    assert err is not None and "Failed to connect" in err.desc, err
'''


def test_tree_env_goes_with_the_binaries_of_the_tree(inner, tree):
    """An explicitly set qemu-system is of another build: it keeps its own modules and
    firmware (QEMU 7.2 aborts on 10.0's), while the tree's tools get the tree's."""
    inner.suite(QSD_SSH_SUITE)

    r = inner.run(f"--qemu-build-dir={tree}", f"--qemu-system={REAL['system']}")

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.assert_outcomes(passed=1)
    r.stdout.re_match_lines([r"qemu build 'default': QEMU [\d.]+$"])
    assert not any("firmware, data" in line for line in r.outlines)
    modules = f"QEMU_MODULE_DIR={tree / BUNDLE_MODULES}"
    assert header_line(r.outlines, "qsd") == binary_line(
        "qsd", tree / "storage-daemon/qemu-storage-daemon", f"--qemu-build-dir {tree}") + f" ({modules})"
    assert header_line(r.outlines, "system") == binary_line("system", REAL["system"], "option --qemu-system")
