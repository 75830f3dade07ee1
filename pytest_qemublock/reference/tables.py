"""Folding a decision table and rendering it as Markdown (no QEMU, no rules: plain data).

A table has *axes* (the case's parameters, e.g. backend-storage, interface) and
*result* columns (expected outcome, because, ...). Rows whose results are equal
and that differ in one axis only are folded into one row listing that axis's
values ("any" when they are all of them), one axis after the other, so a
720-case matrix shows as the few dozen distinct behaviours it has.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

#: a folded cell holding every value of its axis
ANY = "any"


@dataclass(frozen=True)
class Row:
    """One case: its axis values and its result columns, both in the table's column order."""

    axes: tuple[str, ...]
    results: tuple[str, ...]


@dataclass
class Table:
    """A titled decision table; :func:`fold` folds it, :func:`render` prints it."""

    title: str
    intro: str
    axes: tuple[str, ...]
    results: tuple[str, ...]
    rows: list[Row] = field(default_factory=list)

    def add(self, axes: Sequence[str], results: Sequence[str]) -> None:
        if len(axes) != len(self.axes) or len(results) != len(self.results):
            raise ValueError(f"{self.title}: row {axes}/{results} does not fit {self.axes}/{self.results}")
        self.rows.append(Row(tuple(axes), tuple(results)))


def fold(table: Table, order: Sequence[str] | None = None) -> Table:
    """*table* with rows folded along each axis of *order* (default: all axes, left to right).

    Folding keeps the order of first appearance, so the output is deterministic.
    """
    rows = list(table.rows)
    for name in order if order is not None else table.axes:
        i = table.axes.index(name)
        every = list(dict.fromkeys(r.axes[i] for r in table.rows))
        groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
        for r in rows:
            rest = r.axes[:i] + r.axes[i + 1:]
            values = groups.setdefault((rest, r.results), [])
            values += [v for v in _split(r.axes[i], every) if v not in values]
        rows = []
        for (rest, results), values in groups.items():
            cell = ANY if len(every) > 1 and set(values) == set(every) else ", ".join(values)
            rows.append(Row(rest[:i] + (cell,) + rest[i:], results))
    return Table(table.title, table.intro, table.axes, table.results, rows)


def _split(cell: str, every: list[str]) -> list[str]:
    if cell == ANY:
        return list(every)
    return cell.split(", ") if ", " in cell and all(v in every for v in cell.split(", ")) else [cell]


def cell(text: str) -> str:
    """*text* safe inside a Markdown table cell (pipes escaped, one line)."""
    return re.sub(r"\s+", " ", text).replace("|", "\\|").strip()


def render(table: Table, level: int = 3) -> str:
    """*table* as a Markdown section: heading, intro, then the table."""
    head = table.axes + table.results
    lines = [f"{'#' * level} {table.title}", ""]
    if table.intro:
        lines += [table.intro, ""]
    lines += [f"{len(table.rows)} rows.", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in r.axes + r.results) + " |" for r in table.rows]
    return "\n".join(lines) + "\n"


#: QEMU source a ``because`` text cites: a file (with the function after it) or a commit
_CITATION = re.compile(r"\b(?:[\w-]+/)*[\w-]+\.(?:c|h|json)(?: [a-z][a-z0-9]*_[a-z0-9_]*(?=[\s,;:)]|$))?"
                       r"|\b[0-9a-f]{10}\b|\bQAPI feature [\w-]+")


def citations(because: str) -> str:
    """The QEMU sources *because* cites, in order, each once (e.g. ``block.c bdrv_open_inherit``)."""
    found = [m.group(0) for m in _CITATION.finditer(because)]
    return ", ".join(dict.fromkeys(found))
