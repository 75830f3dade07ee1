"""The arch of a build: spec parsing, the name in ids, discovery from a directory."""
from __future__ import annotations

import pytest

from pytest_qemublock.qemu import arch
from pytest_qemublock.qemu.build import BuildError, build_labels, split_build_spec


@pytest.mark.parametrize(("spec", "want"), [
    ("v7.2=/", ("v7.2", "/", None)),
    ("v7.2=/:aarch64", ("v7.2", "/", "aarch64")),
    ("/opt/qemu-9.2:aarch64", ("qemu-9.2", "/opt/qemu-9.2", "aarch64")),
    ("arm=/opt/q:x86_64", ("arm", "/opt/q", "x86_64")),
])
def test_split_build_spec(spec, want):
    assert split_build_spec(spec) == want


@pytest.mark.parametrize(("spec", "message"), [
    ("v7.2=/:arm", "--qemu-build 'v7.2=/:arm': unknown arch 'arm' (known: aarch64, x86_64)"),
    ("v7.2=/:", "--qemu-build 'v7.2=/:': unknown arch '' (known: aarch64, x86_64)"),
    ("v7.2=:aarch64", "--qemu-build 'v7.2=:aarch64': no directory after 'v7.2='"),
])
def test_bad_build_spec_is_one_line(spec, message):
    with pytest.raises(BuildError) as e:
        split_build_spec(spec)
    assert str(e.value) == message


@pytest.mark.parametrize(("name", "arch_name", "want"), [
    ("v7.2", "x86_64", "v7.2"),  # ids of x86_64 builds stay as they were
    ("v7.2", "aarch64", "v7.2-aarch64"),
    ("v7.2-aarch64", "aarch64", "v7.2-aarch64"),
    ("aarch64", "aarch64", "aarch64"),
    ("arm64", "aarch64", "arm64-aarch64"),
])
def test_label(name, arch_name, want):
    assert arch.label(name, arch.get(arch_name)) == want


def _system(d, arch_name):
    p = d / f"qemu-system-{arch_name}"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("#!/bin/sh\n")
    p.chmod(0o755)


def test_labels_come_from_the_binaries_a_directory_holds(tmp_path):
    both, arm, none = tmp_path / "both", tmp_path / "arm", tmp_path / "none"
    _system(both / "usr/bin", "x86_64")
    _system(both / "usr/bin", "aarch64")
    _system(arm / "usr/bin", "aarch64")
    none.mkdir()
    labels = build_labels([f"a={both}", f"b={both}:aarch64", f"c={arm}", f"d={arm}:x86_64", f"e={none}"])
    # x86_64 where the directory has it, else its only arch; an unusable directory keeps its
    # plain name (its resolution reports it, in one line)
    assert [(n, a.name) for n, a in labels] == [
        ("a", "x86_64"), ("b-aarch64", "aarch64"), ("c-aarch64", "aarch64"), ("d", "x86_64"), ("e", "x86_64")]


def test_device_arguments_per_arch():
    assert arch.get("x86_64").device_args() == ["-device", "virtio-scsi-pci,id=scsi0"]
    assert arch.get("aarch64").device_args() == ["-device", "virtio-scsi-pci,id=scsi0",
                                                 "-device", "pcie-root-port,id=hp0"]
    assert (arch.get("aarch64").device_machine, arch.get("aarch64").hotplug_bus) == ("virt", "hp0")
    assert arch.from_filename("qemu-system-aarch64") is arch.get("aarch64")
    assert arch.from_filename("qemu-system-x86_64-microvm") is None
    assert arch.from_filename("qemu-kvm") is None
