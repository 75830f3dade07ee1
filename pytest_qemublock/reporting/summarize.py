"""The matrix summary of a results document, and ``qemublock-summary FILE``.

The end of a run prints the summary of its own results document (built whether
or not ``--qb-results`` writes it), so a results file read back later — one
run's, or shards merged by ``qemublock-merge`` — prints the very same lines.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .fold import AXES, PREFIX, strip_build
from .results import ResultsError, entry_build, load_results
from .summary import UNICODE_PROBE, Segment, build_differences, render_matrix


class Writer(Protocol):
    """What the summary is written to: pytest's TerminalWriter (the terminal reporter's,
    or a new one for ``qemublock-summary``)."""

    fullwidth: int

    def sep(self, sepchar: str, title: str | None = ..., fullwidth: int | None = ...,
            **markup: bool) -> None: ...

    def write(self, msg: str, *, flush: bool = ..., **markup: bool) -> None: ...

    def line(self, s: str = ..., **markup: bool) -> None: ...


@dataclass
class Summary:
    """The table's title and lines, and the lines under it naming cases that differ by build."""

    title: str
    lines: list[list[Segment]]
    differences: list[str]

    def write(self, tw: Writer) -> None:
        tw.sep("-", self.title)
        for line in self.lines:
            for text, style in line:
                tw.write(text, **style)
            tw.write("\n")
        for text in self.differences:
            tw.line(text)


def summarize(document: Mapping[str, Any], results_path: str | None, width: int,
              unicode: bool) -> Summary | None:
    """The summary of *document* (None when no case has ``qb.*`` axes); *results_path*
    is named in the hint under the build differences."""
    cells = {(m["build"], m["scenario"], m["backend"]): Counter(m["counts"])
             for m in document.get("matrix") or []}
    if not cells:
        return None
    present = {b for b, _, _ in cells}
    order = [b for b in document.get("build_order") or [] if b in present]
    builds = order + sorted(present - set(order))
    title, lines = render_matrix(cells, builds, document.get("builds") or {}, width=width,
                                 unicode=unicode)
    differences = []
    if len(builds) > 1:
        by_case: dict[str, dict[str, str]] = {}
        for nodeid, test in (document.get("tests") or {}).items():
            if not any(str(k).startswith(PREFIX) and str(k)[len(PREFIX):] in AXES
                       for k in test.get("properties") or {}):
                continue
            b = entry_build(test, document)
            by_case.setdefault(strip_build(nodeid, [b]), {})[b] = str(test.get("outcome"))
        differences = build_differences(by_case, builds, results_path)
    return Summary(title, lines, differences)


def can_encode(tw: Any, text: str = UNICODE_PROBE) -> bool:
    """Whether the stream *tw* writes to can show *text* (else the table is ASCII)."""
    # TerminalWriter has no public encoding; its private _file is the stream it
    # writes to (the real stdout, not a capture), so ask that one.
    f = getattr(tw, "_file", None) or sys.stdout
    encoding = getattr(f, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
        return True
    except (UnicodeEncodeError, LookupError):
        return False


def summary_main(argv: Sequence[str] | None = None) -> int:
    """``qemublock-summary FILE``: the matrix a run prints at its end, from its results file."""
    p = argparse.ArgumentParser(
        prog="qemublock-summary",
        description="Print the scenario x backend (x build) matrix of a results file "
                    "(pytest --qb-results, or qemublock-merge's output) as the run printed it.")
    p.add_argument("file", metavar="FILE", help="results file")
    args = p.parse_args(argv)
    try:
        document = load_results(args.file)
    except ResultsError as e:
        print(f"qemublock-summary: error: {e}", file=sys.stderr)
        return 2
    # pytest's own writer: the same separator, width ($COLUMNS) and colours as a run's end
    from _pytest._io import TerminalWriter

    tw = TerminalWriter()
    summary = summarize(document, args.file, max(60, tw.fullwidth), can_encode(tw))
    if summary is None:
        print(f"qemublock-summary: {args.file} has no case with qb.* axes", file=sys.stderr)
        return 0
    summary.write(tw)
    return 0
