"""Known QEMU bugs: which cases they hit.

The expectation modules add their entries when imported; a case matching one
is a strict xfail that names the bug, so a fixed build shows up as XPASS(strict).
"""
from __future__ import annotations

import re

#: (scenario, case-id regex, bug description), filled by the expectation modules
KNOWN_BUGS: list[tuple[str, str, str]] = []


def known_bug(scenario: str, case_id: str) -> str | None:
    """The description of the known bug that hits *case_id* of *scenario*, if any."""
    for sc, pattern, bug in KNOWN_BUGS:
        if sc == scenario and re.search(pattern, case_id):
            return bug
    return None
