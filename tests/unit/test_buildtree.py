"""Where a build directory keeps binaries, modules and firmware (qemu/buildtree.py), per layout.

Empty executable files stand in for the binaries: only the layout is looked at here
(tests/test_builddir.py runs real QEMU in a meson-like tree).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from pytest_qemublock.qemu.buildtree import open_tree, searched

SYSTEM = "qemu-system-x86_64"


def _files(root: Path, *paths: str, exe: bool = False) -> Path:
    for rel in paths:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
        p.chmod(0o755 if exe else 0o644)
    return root


def test_meson_tree_with_bundle(tmp_path: Path):
    """QEMU 7.1+: modules and firmware where get_relocated_path() puts them, qsd one level down."""
    _files(tmp_path, SYSTEM, "qemu-img", "storage-daemon/qemu-storage-daemon", exe=True)
    _files(tmp_path, "block-curl.so", "pc-bios/bios-256k.bin",
           "qemu-bundle/opt/q/lib64/qemu/block-curl.so", "qemu-bundle/opt/q/share/qemu/bios-256k.bin")
    t = open_tree(tmp_path, SYSTEM)
    assert t is not None and t.layout.kind == "meson build tree"
    assert t.find("qemu-storage-daemon") == tmp_path / "storage-daemon/qemu-storage-daemon"
    assert t.find("qemu-nbd") is None
    assert t.expected("qemu-nbd") == tmp_path / "qemu-nbd"
    assert t.expected("qemu-storage-daemon") == tmp_path / "storage-daemon/qemu-storage-daemon"
    assert t.env == {"QEMU_MODULE_DIR": str(tmp_path / "qemu-bundle/opt/q/lib64/qemu")}
    assert t.system_args == ("-L", str(tmp_path / "qemu-bundle/opt/q/share/qemu"))


def test_meson_tree_before_the_bundle(tmp_path: Path):
    """QEMU < 7.1: modules in the executable's directory, firmware in pc-bios/ (find_datadir())."""
    _files(tmp_path, SYSTEM, exe=True)
    _files(tmp_path, "block-ssh.so", "pc-bios/bios-256k.bin")
    t = open_tree(tmp_path, SYSTEM)
    assert t is not None
    assert t.env == {"QEMU_MODULE_DIR": str(tmp_path)}
    assert t.system_args == ("-L", str(tmp_path / "pc-bios"))


def test_meson_tree_without_modules_sets_nothing(tmp_path: Path):
    """A build without --enable-modules: no QEMU_MODULE_DIR, no -L without data."""
    _files(tmp_path, SYSTEM, exe=True)
    t = open_tree(tmp_path, SYSTEM)
    assert t is not None and t.env == {} and t.system_args == ()


@pytest.mark.parametrize("bindir, moddir, datadir, kind", [
    ("usr/bin", "usr/lib/x86_64-linux-gnu/qemu", "usr/share/qemu", "dpkg -x root"),
    ("bin", "lib/qemu", "share/qemu", "install prefix"),
])
def test_installed_layouts(tmp_path: Path, bindir: str, moddir: str, datadir: str, kind: str):
    _files(tmp_path, f"{bindir}/{SYSTEM}", f"{bindir}/qemu-storage-daemon", exe=True)
    _files(tmp_path, f"{moddir}/block-iscsi.so", f"{datadir}/kvmvapic.bin")
    t = open_tree(tmp_path, SYSTEM)
    assert t is not None and t.layout.kind == kind
    assert t.find("qemu-storage-daemon") == tmp_path / bindir / "qemu-storage-daemon"
    assert t.env == {"QEMU_MODULE_DIR": str(tmp_path / moddir)}
    assert t.system_args == ("-L", str(tmp_path / datadir))


def test_no_system_binary_no_tree(tmp_path: Path):
    _files(tmp_path, "qemu-img", exe=True)
    _files(tmp_path, SYSTEM)  # not executable
    assert open_tree(tmp_path, SYSTEM) is None
    assert searched(tmp_path, SYSTEM) == [tmp_path / SYSTEM, tmp_path / "storage-daemon" / SYSTEM,
                                          tmp_path / "usr/bin" / SYSTEM, tmp_path / "bin" / SYSTEM]
