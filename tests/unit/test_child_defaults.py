"""The child-role defaults of expectations/defaults.py, checked without QEMU."""
from __future__ import annotations

import pytest

from pytest_qemublock.expectations.defaults import effective_child_aro


@pytest.mark.parametrize(("role", "interface", "parent", "child", "want"), [
    ("file", "qmp", None, None, False),       # blockdev-add sets none: off, inherited
    ("file", "drive", None, None, True),      # -drive turns it on, inherited
    ("data-file", "qmp", True, None, True),   # inherited like file
    ("data-file", "drive", False, None, False),
    ("backing", "drive", None, None, False),  # COW: off whatever the parent has
    ("backing", "qmp", True, None, False),
    ("backing", "qmp", None, True, True),     # explicit wins
    ("file", "drive", None, False, False),
])
def test_effective_child_auto_read_only(role, interface, parent, child, want) -> None:
    assert effective_child_aro(role, interface, parent, child)[0] is want
