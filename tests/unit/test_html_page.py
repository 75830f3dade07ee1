"""The HTML page of a results document: escaping, the matrix cells, the build diff."""
from __future__ import annotations

import re

from pytest_qemublock.reporting.html import html_main, render_html

NASTY = "Could not open '<img src=x onerror=alert(1)>': Read-only & \"odd\""


def _doc() -> dict:
    def test(build: str, outcome: str, **extra: object) -> dict:
        return {"outcome": outcome, "scenario": "open", "backend": "file-erofs", "format": "proto",
                "interface": "blockdev", "build": build, "case": "t.py::t[x]", **extra}
    failing = test("b72", "failed", message=NASTY, details=NASTY, evidence={
        "findings": [{"what": "open <x>", "verdict": "failed", "expected": "succeeds",
                      "because": "block.c bdrv_open_common()", "did": f"failed: {NASTY}"}],
        "processes": [{"name": "qemu", "command": "qemu-system-x86_64 -blockdev '{\"a\": 1}'",
                       "status": "exit status 1", "stderr": NASTY}],
        "qmp": [{"name": "qmp-qemu.jsonl", "lines": 1, "tail": ['0.1 > {"execute":"<q>"}']}],
        "snapshots": [{"name": "qemu-nodes", "text": "[]"}]})
    return {"format": "qemublock-results", "version": 1, "build_order": ["b72", "b10"],
            "builds": {"b72": {"version": "7.2.22"}, "b10": {"version": "10.0.2"}},
            "totals": {"passed": 1, "failed": 1},
            "matrix": [{"build": b, "scenario": "open", "backend": "file-erofs", "counts": {o: 1}}
                       for b, o in (("b72", "failed"), ("b10", "passed"))],
            "tests": {"t.py::t[b72-x]": failing, "t.py::t[b10-x]": test("b10", "passed")}}


def test_everything_from_the_document_is_escaped():
    page = render_html(_doc(), title="<b>t</b>")
    assert "<img" not in page and "<q>" not in page and "<b>t</b>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "Could not open &#x27;" in page and "&amp; &quot;odd&quot;" in page
    assert "{{" not in page  # every placeholder filled
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must load nothing"


def test_cells_and_build_diff():
    page = render_html(_doc())
    cells = re.findall(r'<td class="cell o-(\w+)"[^>]*data-pick="([^"]*)"[^>]*>([^<]*)</td>', page)
    assert ("failed", "scenario=open backend=file-erofs build=b72", "1F") in cells
    assert ("passed", "scenario=open backend=file-erofs build=b10", "1✓") in cells
    assert re.search(r'<tr class="item fixed"[^>]*><td class="mono">t\.py::t\[x\]</td>', page)


def test_bad_input_is_one_line_and_exit_4(tmp_path, capsys):
    bad = tmp_path / "r.json"
    bad.write_text("{}")
    assert html_main([str(bad), "-o", str(tmp_path / "r.html")]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a qemublock results file" in err
    assert not (tmp_path / "r.html").exists()
