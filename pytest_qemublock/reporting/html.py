"""The HTML report: one self-contained page made from a results document.

``--qb-html FILE`` writes it at the end of a run, ``qemublock-html RESULTS.json -o
FILE`` from a results file (one run's or merged shards': the same format). The page
(``report.html``, package data: inline CSS and a little JS, no network) shows the
scenario x backend (x build) matrix as a colour map with counts, the cases whose
outcome differs between builds, and each failed, erroring, xfailed or xpassed case
with its expectation, rule, what QEMU did and the evidence (``docs/report.md``).
Everything taken from the document is escaped.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from importlib.resources import files
from pathlib import Path
from typing import Any, NoReturn

from .fold import FAILING, MISSING, OUTCOMES, PASSING
from .results import ResultsError, entry_build, load_results
from .summary import cell_text

#: the cases that get a section of their own, in the order they are listed
LISTED = ("failed", "error", "xpassed", "xfailed", "skipped")
#: a matrix cell's colour is its worst outcome's
_WORST = ("failed", "error", "xpassed", "xfailed", "passed", "skipped")
_LEGEND = {"passed": "✓ passed", "failed": "F failed", "error": "E error", "xpassed": "X xpassed",
           "xfailed": "x xfailed", "skipped": "s skipped"}
#: a finding's fields, as labelled on the page
_FINDING = (("expected", "expected"), ("because", "rule (because)"), ("did", "QEMU did"),
            ("problems", "differs in"), ("bug_reason", "known bug"), ("predicted", "bug predicts"),
            ("bug_cause", "cause"))


def _q(*parts: object) -> str:
    """A ``data-q`` attribute: the lower-case text the filter searches."""
    return escape(" ".join(str(p) for p in parts if p not in (None, "")).lower())


def _builds(data: Mapping[str, Any]) -> list[str]:
    seen = {entry_build(t, data) for t in (data.get("tests") or {}).values()}
    seen |= {str(m.get("build", MISSING)) for m in data.get("matrix") or []}
    order = [b for b in data.get("build_order") or [] if b in seen]
    return order + sorted(seen - set(order))


def _version(data: Mapping[str, Any], build: str) -> str:
    info = (data.get("builds") or {}).get(build) or {}
    return f"QEMU {info['version']}" if info.get("version") else ""


def _header(data: Mapping[str, Any], title: str) -> str:
    tests = data.get("tests") or {}
    totals = data.get("totals") or {}
    badges = "".join(f'<span class="o-{o}">{totals[o]} {o}</span>' for o in OUTCOMES if totals.get(o))
    info = data.get("builds") or {}
    lines = {b: str((info.get(b) or {}).get("version_line") or _version(data, b) or "?")
             for b in _builds(data)}
    builds = ", ".join(f"<b>{escape(b)}</b> = {escape(v)}" for b, v in lines.items() if b != MISSING)
    meta = [f"{len(tests)} cases, created {escape(str(data.get('created', '?')))}, "
            f"{float(data.get('duration') or 0):.1f} s, exit status {escape(str(data.get('exitstatus')))}"
            f", {int(data.get('workers') or 0) or 'no'} xdist workers"]
    if builds:
        meta.append(f"builds: {builds}")
    if data.get("args"):
        meta.append("<span class=\"mono\">pytest " + escape(" ".join(map(str, data["args"]))) + "</span>")
    if data.get("collect_errors"):
        meta.append("collection errors: " + escape(", ".join(map(str, data["collect_errors"]))))
    return (f"<h1>{escape(title)}</h1>\n" + "".join(f'<p class="meta">{m}</p>\n' for m in meta)
            + f'<p class="totals">{badges}</p>\n'
            + '<nav><a href="#matrix">matrix</a><a href="#builds">between builds</a>'
              '<a href="#cases">cases</a></nav>\n'
            + '<div class="filterbar"><input id="filter" type="search" autocomplete="off" '
              'placeholder="filter: words that must all occur, e.g. failed v7.2 file-erofs">'
              '<span id="shown"></span><div class="hint">matches scenario=, backend=, build=, '
              'outcome=, format=, interface=, the test id and the message; click a matrix cell '
              'to filter by it; a link may carry #filter=...</div></div>\n')


def _worst(counts: Mapping[str, int]) -> str:
    return next((o for o in _WORST if counts.get(o)), "none")


def _matrix(data: Mapping[str, Any], builds: Sequence[str]) -> str:
    cells: dict[tuple[str, str, str], dict[str, int]] = {}
    for m in data.get("matrix") or []:
        key = (str(m.get("build", MISSING)), str(m.get("scenario", MISSING)), str(m.get("backend", MISSING)))
        cells[key] = {o: int(n) for o, n in (m.get("counts") or {}).items()}
    if not cells:
        return "<h2 id=\"matrix\">Matrix</h2>\n<p>No case carried qb.* coordinates.</p>\n"
    scenarios = sorted({s for _, s, _ in cells})
    backends = sorted({k for _, _, k in cells})
    # the axis with more values goes down the page, as the terminal summary swaps them
    by_backend = len(backends) > len(scenarios)
    rows, cols = (backends, scenarios) if by_backend else (scenarios, backends)
    row_axis, col_axis = ("backend", "scenario") if by_backend else ("scenario", "backend")

    def at(build: str, row: str, col: str) -> dict[str, int]:
        return cells.get((build, col, row) if by_backend else (build, row, col), {})

    multi = len(builds) > 1
    head = f'<th class="row">{row_axis} \\ {col_axis}</th>' + ("<th>build</th>" if multi else "")
    # an (all) row / column only sums something when there are several
    totals: list[str | None] = [None] if len(cols) > 1 else []
    head += "".join(f"<th>{escape(c)}</th>" for c in cols) + ("<th>(all)</th>" if totals else "")
    body = []
    for row in [*rows, *([None] if len(rows) > 1 else [])]:
        for i, build in enumerate(builds):
            tr = ' class="total"' if row is None and i == 0 else ""
            line = [f'<tr{tr}>']
            if i == 0:
                label = "(all)" if row is None else row
                line.append(f'<th class="row" rowspan="{len(builds)}">{escape(label)}</th>')
            if multi:
                line.append(f'<th class="build">{escape(build)}</th>')
            for col in [*cols, *totals]:
                counts: dict[str, int] = {}
                for r in rows if row is None else [row]:
                    for c in cols if col is None else [col]:
                        for o, n in at(build, r, c).items():
                            counts[o] = counts.get(o, 0) + n
                line.append(_cell(counts, build, {row_axis: row, col_axis: col}, multi))
            body.append("".join(line) + "</tr>")
    legend = " ".join(f'<span class="badge o-{o}">{escape(t)}</span>' for o, t in _LEGEND.items())
    title = f"Matrix: {row_axis} × {col_axis}" + (" × build" if multi else "")
    return (f'<h2 id="matrix">{title}</h2>\n'
            f'<p class="hint">{legend} A cell\'s colour is its worst outcome.</p>\n'
            f'<div class="scroll"><table class="matrix"><thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(body) + "\n</tbody></table></div>\n")


def _cell(counts: Mapping[str, int], build: str, axes: Mapping[str, str | None], multi: bool) -> str:
    if not any(counts.values()):
        return '<td class="cell none">·</td>'
    coords = {k: v for k, v in axes.items() if v is not None}
    if multi:
        coords["build"] = build
    pick = " ".join(f"{k}={v}" for k, v in coords.items())
    outcomes = " ".join(f"outcome={o}" for o in OUTCOMES if counts.get(o))
    title = ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts.get(o))
    return (f'<td class="cell o-{_worst(counts)}" data-q="{_q(pick, outcomes)}" data-pick="{escape(pick)}" '
            f'title="{escape(pick)}: {escape(title)}">{escape(cell_text(counts))}</td>')


def _diff(data: Mapping[str, Any], builds: Sequence[str]) -> str:
    if len(builds) < 2:
        return ("<h2 id=\"builds\">Between builds</h2>\n<p>One build in these results: nothing to compare "
                "(two runs: <code>qemublock-diff A.json B.json</code>).</p>\n")
    by_case: dict[str, dict[str, Mapping[str, Any]]] = {}
    for nodeid, t in (data.get("tests") or {}).items():
        by_case.setdefault(str(t.get("case") or nodeid), {})[entry_build(t, data)] = t
    differ = {c: bs for c, bs in by_case.items() if len({str(t.get("outcome")) for t in bs.values()}) > 1
              or len(bs) != len(builds)}

    def rank(item: tuple[str, dict[str, Mapping[str, Any]]]) -> tuple[int, str]:
        outs = [str(t.get("outcome")) for t in item[1].values()]
        return (0 if any(o in FAILING for o in outs) else 1, item[0])

    rows = []
    first, last = builds[0], builds[-1]
    for case, bs in sorted(differ.items(), key=rank):
        a, b = (str(bs[x].get("outcome")) if x in bs else "" for x in (first, last))
        kind = ("regression" if a in PASSING and b in FAILING
                else "fixed" if a in FAILING and b in PASSING else "")
        any_t = next(iter(bs.values()))
        outs = "".join(f'<td><span class="badge o-{escape(str(bs[b_].get("outcome")))}">'
                       f'{escape(str(bs[b_].get("outcome")))}</span></td>' if b_ in bs else "<td>—</td>"
                       for b_ in builds)
        q = _q(case, f"scenario={any_t.get('scenario')}", f"backend={any_t.get('backend')}",
               *(f"build={b_} outcome={bs[b_].get('outcome')}" for b_ in bs), kind)
        rows.append(f'<tr class="item {kind}" data-q="{q}"><td class="mono">{escape(case)}</td>{outs}</tr>')
    head = "".join(f"<th>{escape(b)} {escape(_version(data, b))}</th>" for b in builds)
    text = (f"{len(differ)} of {len(by_case)} cases end differently between builds "
            f"(those failing or erroring on any build first)." if differ
            else f"All {len(by_case)} cases end the same on every build.")
    table = (f'<table class="list"><thead><tr><th>case (test id without the build)</th>{head}</tr></thead>'
             "\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>\n") if rows else ""
    return f'<h2 id="builds">Between builds</h2>\n<p id="diff-summary">{text}</p>\n{table}'


def _label(text: str) -> str:
    return f'<p class="hint">{escape(text)}</p>'


def _pre(text: str, cls: str = "") -> str:
    return f'<pre class="{cls}">{escape(text)}</pre>' if text else ""


def _evidence(ev: Mapping[str, Any]) -> str:
    out = []
    for f in ev.get("findings") or []:
        rows = "".join(f"<tr><th>{label}</th><td>{escape(str(f[k]))}</td></tr>"
                       for k, label in _FINDING if f.get(k))
        bug = f" <code>{escape(str(f['bug']))}</code>" if f.get("bug") else ""
        out.append(f'<div class="finding"><h4>{escape(str(f.get("what", "")))} '
                   f'<span class="badge">{escape(str(f.get("verdict", "")))}</span>{bug}</h4>'
                   f'<table class="kv">{rows}</table></div>')
    if ev.get("context"):
        rows = "".join(f"<tr><th>{escape(str(k))}</th><td class=\"mono\">{escape(str(v))}</td></tr>"
                       for k, v in ev["context"].items())
        out.append(f'<h3>context</h3><table class="kv">{rows}</table>')
    for p in ev.get("processes") or []:
        # the status names the process already: "qemu (pid 6235, exit status 1)"
        out.append(f"<h3>process {escape(str(p.get('status') or p.get('name')))}</h3>"
                   + _pre("$ " + str(p.get("command", "")), "cmd")
                   + (_label("stderr (its end)") + _pre(str(p["stderr"]), "stderr") if p.get("stderr")
                      else _label("stderr: empty")))
    for t in ev.get("qmp") or []:
        tail = t.get("tail") or []
        if not tail:
            continue
        out.append(f"<h3>QMP {escape(str(t.get('name')))} "
                   f"(last {len(tail)} of {t.get('lines')} messages)</h3>"
                   + _pre("\n".join(map(str, tail)), "qmp"))
    for s in ev.get("snapshots") or []:
        out.append(f"<details><summary>snapshot {escape(str(s.get('name')))}</summary>"
                   + _pre(str(s.get("text", "")), "snapshot") + "</details>")
    if ev.get("kept"):
        out.append(f'<p class="hint">full evidence: <code>{escape(str(ev["kept"]))}</code></p>')
    return "\n".join(out)


def _case(nodeid: str, t: Mapping[str, Any], build: str) -> str:
    outcome = str(t.get("outcome"))
    axes = [f"{a}={t.get(a, MISSING)}" for a in ("scenario", "backend", "format", "interface")]
    q = _q(nodeid, f"outcome={outcome}", f"build={build}", *axes, t.get("message", ""))
    where = " ".join(f'<span class="badge">{escape(a)}</span>' for a in [f"build={build}", *axes]
                     if not a.endswith("=" + MISSING))
    # the whole failure text where there is one (the message is its first line, squeezed),
    # unless it only repeats the message ("XFailed: <message>", from files of older runs)
    details, message = str(t.get("details") or ""), str(t.get("message") or "")
    text = (_pre(details, "details") if details and details.partition(": ")[2] != message
            else f'<p class="msg">{escape(message)}</p>')
    body = [where, text]
    ev = t.get("evidence") or {}
    if ev:
        body.append(_evidence(ev))
    opened = " open" if outcome in FAILING else ""
    return (f'<details class="case o-{escape(outcome)}" data-q="{q}"{opened}>'
            f'<summary><span class="badge o-{escape(outcome)}">{escape(outcome)}</span> '
            f'<span class="id">{escape(nodeid)}</span></summary>\n' + "\n".join(body) + "</details>")


def _cases(data: Mapping[str, Any]) -> str:
    tests = data.get("tests") or {}
    listed = sorted(((n, t) for n, t in tests.items() if t.get("outcome") in LISTED),
                    key=lambda nt: (LISTED.index(str(nt[1]["outcome"])), nt[0]))
    if not listed:
        return "<h2 id=\"cases\">Cases</h2>\n<p>Every case passed.</p>\n"
    parts = [_case(n, t, entry_build(t, data)) for n, t in listed]
    counts = ", ".join(f"{sum(1 for _, t in listed if t['outcome'] == o)} {o}" for o in LISTED
                       if any(t["outcome"] == o for _, t in listed))
    return (f"<h2 id=\"cases\">Cases that did not simply pass ({counts})</h2>\n"
            '<p class="hint">Failures and errors are open; the rest fold out on a click.</p>\n'
            + "\n".join(parts) + "\n")


def render_html(data: Mapping[str, Any], title: str = "qemublock report") -> str:
    """The page for the results document *data*."""
    builds = _builds(data)
    body = _header(data, title) + _matrix(data, builds) + _diff(data, builds) + _cases(data)
    template = files("pytest_qemublock.reporting").joinpath("report.html").read_text(encoding="utf-8")
    return template.replace("{{title}}", escape(title)).replace("{{body}}", body)


def write_html(path: Path, data: Mapping[str, Any], title: str = "qemublock report") -> None:
    """Write the page through a temporary file (a reader never sees half of it); raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(data, title), encoding="utf-8")
    tmp.replace(path)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # bad input is one line and exit status 4, as for the plugin's options
        self.exit(4, f"qemublock-html: {message}\n")


def html_main(argv: Iterable[str] | None = None) -> int:
    """``qemublock-html RESULTS.json -o report.html``."""
    p = _Parser(prog="qemublock-html",
                description="Write the HTML report (matrix, build differences, failing cases with "
                            "their evidence) of a qemublock results file (pytest --qb-results FILE).")
    p.add_argument("results", metavar="RESULTS.json")
    p.add_argument("-o", "--output", metavar="FILE", default="qemublock-report.html",
                   help="the page to write (default: %(default)s)")
    p.add_argument("--title", default="qemublock report")
    args = p.parse_args(None if argv is None else list(argv))
    try:
        data = load_results(args.results)
    except ResultsError as e:
        print(f"qemublock-html: {e}", file=sys.stderr)
        return 4
    try:
        write_html(Path(args.output), data, args.title)
    except OSError as e:
        print(f"qemublock-html: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return 4
    print(f"qemublock-html: wrote {args.output}")
    return 0
