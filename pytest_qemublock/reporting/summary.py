"""The end-of-run matrix for the terminal: how many cases of each scenario x backend
(x build) ended how, and which cases differ between builds."""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .fold import FAILING, MISSING, OUTCOMES

_SYMBOLS = {"passed": "✓", "failed": "F", "error": "E", "xpassed": "X", "xfailed": "x",
            "skipped": "s"}
_ASCII_SYMBOLS = {**_SYMBOLS, "passed": "p"}
_EMPTY, _ASCII_EMPTY = "·", "."
_ELLIPSIS, _ASCII_ELLIPSIS = "…", "~"
#: what the terminal must be able to encode for the unicode table
UNICODE_PROBE = _SYMBOLS["passed"] + _EMPTY + _ELLIPSIS + "×"

Segment = tuple[str, dict[str, bool]]


def cell_text(counts: Mapping[str, int], unicode: bool = True) -> str:
    symbols = _SYMBOLS if unicode else _ASCII_SYMBOLS
    parts = [f"{counts[o]}{symbols[o]}" for o in OUTCOMES if counts.get(o)]
    return " ".join(parts) if parts else (_EMPTY if unicode else _ASCII_EMPTY)


def cell_style(counts: Mapping[str, int]) -> dict[str, bool]:
    if counts.get("failed") or counts.get("error"):
        return {"red": True, "bold": True}
    if counts.get("xpassed"):
        return {"yellow": True}
    if counts.get("passed"):
        return {"green": True}
    return {}


def _fit(text: str, width: int, unicode: bool) -> str:
    if len(text) <= width:
        return text
    ell = _ELLIPSIS if unicode else _ASCII_ELLIPSIS
    return text[: max(0, width - 1)] + ell


def _wrap_header(name: str, width: int, unicode: bool) -> list[str]:
    """*name* on at most two lines of *width*, broken after a separator if possible."""
    if len(name) <= width:
        return [name]
    cut = max((name.rfind(sep, 0, width + 1) for sep in "-_+./:"), default=-1)
    if cut <= 0:
        first, rest = name[:width], name[width:]
    else:
        first, rest = name[: cut + 1], name[cut + 1:]
    return [first, _fit(rest, width, unicode)]


@dataclass
class _Plan:
    row_axis: str
    col_axis: str
    rows: list[str]
    cols: list[str]
    row_w: int
    build_w: int
    col_w: dict[str, int]
    chunks: list[list[str]]
    gap: int = 2
    #: columns with cases in one row only, shown as a line under the table
    lone: list[str] = field(default_factory=list)


_GAP = 2
_TOTAL = "(all)"
Keyed = dict[tuple[str, str, str], Mapping[str, int]]  # (build, row, column) -> counts


def _keyed(cells: Mapping[tuple[str, str, str], Mapping[str, int]], transpose: bool) -> Keyed:
    return {(b, k if transpose else s, s if transpose else k): n for (b, s, k), n in cells.items()}


def _plan(cells: Mapping[tuple[str, str, str], Mapping[str, int]], builds: Sequence[str],
          transpose: bool, width: int, unicode: bool) -> _Plan:
    """How to lay the table out: one table if at all possible, else several."""
    row_axis, col_axis = ("backend", "scenario") if transpose else ("scenario", "backend")
    keyed = _keyed(cells, transpose)
    cols = sorted({c for _, _, c in keyed})
    plan = _layout(keyed, cols, builds, width, unicode, _GAP, row_axis, col_axis)
    if len(plan.chunks) > 1:
        # A column with cases in a single row (the smoke tests have no backend)
        # would be a table of empty cells: it becomes a line under the table.
        lone = [c for c in cols if len({r for _, r, cc in keyed if cc == c}) == 1]
        if lone and len(lone) < len(cols):
            kept = [c for c in cols if c not in lone]
            plan = _layout(keyed, kept, builds, width, unicode, _GAP, row_axis, col_axis)
            plan.lone = lone
    if len(plan.chunks) > 1:  # one space between columns, if that makes one table
        narrow = _layout(keyed, plan.cols, builds, width, unicode, 1, row_axis, col_axis)
        if len(narrow.chunks) < len(plan.chunks):
            narrow.lone = plan.lone
            plan = narrow
    if len(plan.chunks) > 1:
        plan = _without_sparse(keyed, plan, builds, width, unicode) or plan
    return plan


#: a column with cases in at most this many rows may become lines under the table
_SPARSE = 3


def _without_sparse(keyed: Keyed, plan: _Plan, builds: Sequence[str], width: int,
                    unicode: bool) -> _Plan | None:
    """One table, if moving a few sparse columns (cases in 2-3 rows; fewest rows, then cases first) into
    lines under it makes one; else None. A second table of two mostly empty columns
    says less than two short lines (the suites on one build: fallback and snapshot)."""
    rows_of = {c: len({r for _, r, cc in keyed if cc == c}) for c in plan.cols}
    cases = {c: sum(sum(n.values()) for (_, _, cc), n in keyed.items() if cc == c) for c in plan.cols}
    sparse = sorted((c for c in plan.cols if rows_of[c] <= _SPARSE), key=lambda c: (rows_of[c], cases[c], c))
    moved: list[str] = []
    for c in sparse:
        moved.append(c)
        kept = [k for k in plan.cols if k not in moved]
        if len(moved) * 2 > len(kept):  # the lines would outgrow the table
            return None
        for gap in (_GAP, 1):
            candidate = _layout(keyed, kept, builds, width, unicode, gap, plan.row_axis, plan.col_axis)
            if len(candidate.chunks) == 1:
                candidate.lone = sorted(plan.lone + moved)
                return candidate
    return None


def _layout(keyed: Keyed, cols: list[str], builds: Sequence[str], width: int, unicode: bool,
            gap: int, row_axis: str, col_axis: str) -> _Plan:
    rows = sorted({r for _, r, c in keyed if c in cols})
    multi = len(builds) > 1
    texts = [(c, cell_text(n, unicode)) for (_, _, c), n in keyed.items() if c in cols]
    totals: dict[tuple[str, str], Counter[str]] = {}
    for (b, _, c), n in keyed.items():
        totals.setdefault((b, c), Counter()).update(n)
    if len(rows) > 1:
        texts += [(c, cell_text(n, unicode)) for (_, c), n in totals.items() if c in cols]
    cell_w = {c: max([len(t) for cc, t in texts if cc == c] + [1]) for c in cols}
    row_w = max([len(row_axis), len(_TOTAL)] + [len(r) for r in rows])
    build_w = max([len("build")] + [len(b) for b in builds]) if multi else 0

    def label_w() -> int:
        return row_w + _GAP + (build_w + _GAP if multi else 0)

    # Whole column names if they fit; else a long name widens its column up to
    # 12 characters and wraps onto a second header line.
    col_w = {c: max(cell_w[c], len(c)) for c in cols}
    if label_w() + sum(w + gap for w in col_w.values()) - gap > width:
        col_w = {c: max(cell_w[c], min(len(c), 12)) for c in cols}

    widest = max(col_w.values(), default=0)
    while label_w() + widest > width and row_w > 12:
        row_w -= 1
    if label_w() + sum(w + gap for w in col_w.values()) - gap > width:
        row_w = max(12, min(row_w, 28))
    chunks: list[list[str]] = []
    current: list[str] = []
    used = label_w()
    for c in cols:
        if current and used + col_w[c] > width:
            chunks.append(current)
            current, used = [], label_w()
        current.append(c)
        used += col_w[c] + gap
    if current:
        chunks.append(current)
    return _Plan(row_axis, col_axis, rows, cols, row_w, build_w, col_w, chunks, gap)


def _describe_build(name: str, info: Mapping[str, Any]) -> str:
    """``v7.2 = QEMU 7.2.22``; the arch too where it is not x86_64 (results files of
    runs before arches were recorded have none)."""
    if not info.get("version"):
        return name
    arch = info.get("arch") or "x86_64"
    return f"{name} = QEMU {info['version']}" + (f" for {arch}" if arch != "x86_64" else "")


def render_matrix(cells: Mapping[tuple[str, str, str], Mapping[str, int]], builds: Sequence[str],
                  build_info: Mapping[str, Mapping[str, Any]] | None = None, width: int = 100,
                  unicode: bool = True, orientation: str = "auto"
                  ) -> tuple[str, list[list[Segment]]]:
    """The matrix as a title and lines of (text, markup) segments, none wider than *width*.

    *cells* maps (build, scenario, backend) to outcome counts. Rows are
    scenarios and columns backends, unless that table is too wide and the
    transposed one is not (many backends, few scenarios): then rows are
    backends. With several builds each row has one sub-row per build.
    When the table is too wide, columns with cases in one row only become
    lines under it, then columns get one space between them instead of two;
    columns that still do not fit go into further tables below.
    """
    build_info = build_info or {}
    multi = len(builds) > 1
    if orientation == "auto":
        normal = _plan(cells, builds, False, width, unicode)
        plan = normal
        if len(normal.chunks) > 1:
            other = _plan(cells, builds, True, width, unicode)
            if len(other.chunks) < len(normal.chunks):
                plan = other
    else:
        plan = _plan(cells, builds, orientation == "backend", width, unicode)
    keyed = _keyed(cells, plan.row_axis == "backend")
    totals: dict[tuple[str, str], Counter[str]] = {}
    for (b, _, c), n in keyed.items():
        totals.setdefault((b, c), Counter()).update(n)

    sym = _SYMBOLS if unicode else _ASCII_SYMBOLS
    empty = _EMPTY if unicode else _ASCII_EMPTY
    times = "×" if unicode else "x"
    title = f"qemublock matrix: {plan.row_axis} {times} {plan.col_axis}" + (
        f" {times} build" if multi else "")
    out: list[list[Segment]] = []
    legend = "legend: " + "  ".join(f"{sym[o]} {o}" for o in OUTCOMES) + f"  {empty} none"
    out.append([(_fit(legend, width, unicode), {})])
    if builds and list(builds) != [MISSING]:
        desc = ", ".join(_describe_build(b, build_info.get(b, {})) for b in builds)
        out.append([(_fit(("builds: " if multi else "build: ") + desc, width, unicode), {})])

    gap = plan.gap
    label_w = plan.row_w + _GAP + (plan.build_w + _GAP if multi else 0)
    for ci, chunk in enumerate(plan.chunks):
        if len(plan.chunks) > 1:
            out.append([(f"{plan.col_axis}s {ci + 1}/{len(plan.chunks)}:", {})])
        headers = {c: _wrap_header(c, plan.col_w[c], unicode) for c in chunk}
        depth = max(len(h) for h in headers.values())
        for row in range(depth):
            last = row == depth - 1
            left = (plan.row_axis if last else "").ljust(plan.row_w + _GAP)
            if multi:
                left += ("build" if last else "").ljust(plan.build_w + _GAP)
            line: list[Segment] = [(left, {"bold": True})]
            for c in chunk:
                h = headers[c]
                text = h[row - (depth - len(h))] if row >= depth - len(h) else ""
                line.append((text.ljust(plan.col_w[c] + gap), {"bold": True}))
            out.append(_rstrip(line))
        rows = [(r, b) for r in plan.rows for b in builds
                if any((b, r, c) in keyed for c in plan.cols)]
        if len(plan.rows) > 1:
            rule = min(width, label_w + sum(plan.col_w[c] + gap for c in chunk) - gap)
            rows += [("", "")] + [(_TOTAL, b) for b in builds]
        previous = None
        for r, b in rows:
            if (r, b) == ("", ""):
                out.append([("-" * rule, {})])
                continue
            shown = _fit(r, plan.row_w, unicode) if r != previous else ""
            previous = r
            left = shown.ljust(plan.row_w + _GAP) + (b.ljust(plan.build_w + _GAP) if multi else "")
            line = [(left, {})]
            for c in chunk:
                counts = totals.get((b, c)) if r == _TOTAL else keyed.get((b, r, c))
                text = cell_text(counts or {}, unicode)
                line.append((text, cell_style(counts or {})))
                line.append((" " * (plan.col_w[c] + gap - len(text)), {}))
            out.append(_rstrip(line))
    for c in plan.lone:
        out += _lone_lines(c, plan.row_axis, keyed, builds, width, unicode)
    return title, out


def _lone_lines(col: str, row_axis: str, keyed: Keyed, builds: Sequence[str], width: int,
                unicode: bool) -> list[list[Segment]]:
    """``smoke: only backend -: 2✓`` (with several builds: ``b72 2✓, b10 2✓``); a column of
    a few rows: ``snapshot: only backends file-rw: 4✓; file-erofs: 4✓``, wrapped."""
    rows = sorted({r for _, r, c in keyed if c == col})
    axis = row_axis if len(rows) == 1 else f"{row_axis}s"
    lines: list[list[Segment]] = [[(_fit(f"{col}: only {axis} ", max(1, width // 2), unicode), {})]]
    used = len(lines[0][0][0])
    for ri, row in enumerate(rows):
        part: list[Segment] = [(("; " if ri else "") + f"{row}: ", {})]
        for i, b in enumerate(bb for bb in builds if (bb, row, col) in keyed):
            counts = keyed[(b, row, col)]
            part += [((", " if i else "") + (f"{b} " if len(builds) > 1 else ""), {}),
                     (cell_text(counts, unicode), cell_style(counts))]
        size = sum(len(t) for t, _ in part)
        if ri and used + size > width:  # wrap before this row, indented
            lines.append([("  ", {})])
            part[0] = (part[0][0].removeprefix("; "), part[0][1])
            size -= 2
            lines[-2].append((";", {}))
            used = 2
        if used + size > width:  # one row longer than the line: cut it
            part = [(_fit("".join(t for t, _ in part), max(1, width - used), unicode), {})]
            size = len(part[0][0])
        lines[-1] += part
        used += size
    return lines


def _rstrip(line: list[Segment]) -> list[Segment]:
    while line and not line[-1][0].strip():
        line.pop()
    if line:
        text, style = line[-1]
        line[-1] = (text.rstrip(), style)
    return line


def render_text(lines: list[list[Segment]]) -> str:
    return "\n".join("".join(t for t, _ in line) for line in lines)


def build_differences(outcomes: Mapping[str, Mapping[str, str]], builds: Sequence[str],
                      results_path: str | None) -> list[str]:
    """Lines naming the cases whose outcome differs between builds.

    *outcomes* maps a case id (test id without the build) to build -> outcome.
    """
    # Cases that fail on some build first, then the rest (skips, xfails...).
    differ = sorted((k for k, v in outcomes.items() if len(v) > 1 and len(set(v.values())) > 1),
                    key=lambda k: (not set(outcomes[k].values()) & set(FAILING), k))
    if not differ:
        return [f"same outcome on all {len(builds)} builds for every case"]
    lines = [f"outcome differs between builds for {len(differ)} case(s):"]
    for k in differ[:8]:
        v = outcomes[k]
        lines.append(f"  {k}: " + ", ".join(f"{b} {v[b]}" for b in builds if b in v))
    if len(differ) > 8:
        lines.append(f"  ... and {len(differ) - 8} more")
    diff = f"qemublock-diff {results_path or 'RESULTS.json'} --builds {builds[0]} {builds[1]}"
    lines.append(f"  (all of them: {diff}" + ("" if results_path else
                                               ", after a run with --qb-results RESULTS.json") + ")")
    return lines
