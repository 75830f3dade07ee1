"""Comparisons shared by the expectation styles (one-shot opens and step-wise scenarios)."""
from __future__ import annotations

from typing import Mapping


def ro_mismatches(want: Mapping[str, bool], got: Mapping[str, bool]) -> list[str]:
    """How the ``ro`` flags *got* (node -> ro) differ from *want*."""
    out = []
    for node, expected in want.items():
        have = got.get(node)
        if have is None:
            out.append(f"node {node} missing (nodes: {sorted(got)})")
        elif have != expected:
            out.append(f"{node}.ro={have}, expected {expected}")
    return out
