"""qemu-img --help's format list, as 7.2 and 10.0 print it."""
from pytest_qemublock.qemu.capabilities import parse_formats

OLD = "Supported formats: blkdebug qcow2 raw vvfat\n\nSee <https://qemu.org/contribute/report-a-bug>\n"
NEW = ("Supported image formats:\n\n  blkdebug blklogwrites qcow2\n  raw vvfat\n\n"
       "See <https://qemu.org/contribute/report-a-bug> for how to report bugs.\n")


def test_one_line_list():
    assert parse_formats(OLD) == ["blkdebug", "qcow2", "raw", "vvfat"]


def test_wrapped_paragraph_since_10_0():
    assert parse_formats(NEW) == ["blkdebug", "blklogwrites", "qcow2", "raw", "vvfat"]


def test_no_list():
    assert parse_formats("usage: qemu-img [standard options] command [command options]\n") == []
