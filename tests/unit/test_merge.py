"""``qemublock-merge`` on hand-made shard results and JUnit files (no pytest run, no QEMU)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_qemublock.reporting.junit import merge_junit
from pytest_qemublock.reporting.merge import MergeError, merge_documents, merge_main
from pytest_qemublock.reporting.results import ResultsError
from pytest_qemublock.reporting.summarize import summarize

BUILDS = {"b72": {"version": "7.2.22", "qemu_system": "/usr/bin/qemu-system-x86_64",
                  "version_line": "QEMU emulator version 7.2.22"}}


def _test(outcome: str, backend: str, **extra: Any) -> dict[str, Any]:
    return {"outcome": outcome, "scenario": "open", "backend": backend, "format": "raw",
            "build": "b72", "interface": "blockdev",
            "properties": {"qb.scenario": "open", "qb.backend": backend}, "duration": 0.5,
            "phases": {"setup": 0.1, "call": 0.3, "teardown": 0.1}, "qemu_procs": 1,
            "procs": {"qemu-img": 1}, "worker": "gw0", "case": "", **extra}


def _shard(k: int, n: int, tests: dict[str, dict[str, Any]], **over: Any) -> dict[str, Any]:
    from collections import Counter

    cells: dict[tuple[str, str], Counter[str]] = {}
    for t in tests.values():
        cells.setdefault((t["scenario"], t["backend"]), Counter())[t["outcome"]] += 1
    doc = {
        "format": "qemublock-results", "version": 1, "created": f"2026-11-29T08:0{k}:00+00:00",
        "duration": 10.0 * k, "exitstatus": 1 if any(t["outcome"] == "failed" for t in tests.values()) else 0,
        "args": ["suites", "--qb-shard", f"{k}/{n}"], "workers": 2, "build_order": ["b72"],
        "builds": BUILDS, "totals": dict(Counter(t["outcome"] for t in tests.values())),
        "matrix": [{"build": "b72", "scenario": s, "backend": b, "counts": dict(c)}
                   for (s, b), c in sorted(cells.items())],
        "procs": {"tests": {"qemu-img": len(tests)}, "outside_tests": {"sh": 1}, "counted": True},
        "collect_errors": [],
        "shard": {"index": k, "total": n, "groups": 4, "cases": 5, "selected": len(tests),
                  "estimated": 1.0, "balanced_by": "case count", "partition": "abcd"},
        "tests": tests,
    }
    doc.update(over)
    return doc


def _three() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("s1.json", _shard(1, 3, {"o.py::t[file-rw]": _test("passed", "file-rw", html_log="a.html"),
                                  "o.py::u[file-rw]": _test("failed", "file-rw", message="boom")})),
        ("s2.json", _shard(2, 3, {"o.py::t[nbd]": _test("passed", "nbd")})),
        ("s3.json", _shard(3, 3, {"r.py::t[file-rw]": _test("passed", "file-rw"),
                                  "r.py::t[nbd]": _test("xfailed", "nbd")})),
    ]


def test_merge_is_a_single_runs_document() -> None:
    shards = _three()
    merged = merge_documents(list(reversed(shards)))  # any order of files
    assert merged["format"] == "qemublock-results" and merged["version"] == 1
    assert list(merged["tests"]) == ["o.py::t[file-rw]", "o.py::u[file-rw]", "o.py::t[nbd]",
                                     "r.py::t[file-rw]", "r.py::t[nbd]"]
    # case records whole, fields this version does not know included
    assert merged["tests"]["o.py::t[file-rw]"] == shards[0][1]["tests"]["o.py::t[file-rw]"]
    assert merged["tests"]["o.py::t[file-rw]"]["html_log"] == "a.html"
    assert merged["totals"] == {"passed": 3, "failed": 1, "xfailed": 1}
    assert merged["matrix"] == [
        {"build": "b72", "scenario": "open", "backend": "file-rw", "counts": {"passed": 2, "failed": 1}},
        {"build": "b72", "scenario": "open", "backend": "nbd", "counts": {"passed": 1, "xfailed": 1}}]
    assert (merged["duration"], merged["exitstatus"], merged["workers"]) == (30.0, 1, 6)
    assert merged["created"] == "2026-11-29T08:01:00+00:00"
    assert merged["procs"] == {"tests": {"qemu-img": 5}, "outside_tests": {"sh": 3}, "counted": True}
    assert merged["builds"] == BUILDS and merged["build_order"] == ["b72"]
    assert "shard" not in merged
    assert [(s["index"], s["file"], s["tests"]) for s in merged["shards"]] == \
        [(1, "s1.json", 2), (2, "s2.json", 1), (3, "s3.json", 2)]


def test_merged_summary_is_the_sum_of_the_shards() -> None:
    merged = merge_documents(_three())
    summary = summarize(merged, "r.json", 80, unicode=False)
    assert summary is not None
    text = "\n".join("".join(t for t, _ in line) for line in summary.lines)
    assert "2p 1F" in text and "1p 1x" in text


def test_unknown_top_level_fields_are_kept_when_every_shard_agrees() -> None:
    shards = _three()
    for _, doc in shards:
        doc["html"] = {"theme": "dark"}
    shards[0][1]["per_shard"] = 1
    merged = merge_documents(shards)
    assert merged["html"] == {"theme": "dark"}
    assert "per_shard" not in merged


@pytest.mark.parametrize(("change", "error"), [
    (lambda s: s.pop(1), r"^shard 2/3 missing \(given: s1.json, s3.json\)$"),
    (lambda s: s.__setitem__(1, ("s2.json", _shard(1, 3, {"x.py::t": _test("passed", "nbd")}))),
     r"^s1.json and s2.json are both shard 1/3$"),
    (lambda s: s[1][1]["shard"].update(total=4), r"^s1.json is a shard of 3, s2.json of 4$"),
    (lambda s: s[2][1]["shard"].update(partition="ffff"),
     r"^s1.json and s3.json cut different collections \(partition abcd vs ffff\)"),
    (lambda s: s[1][1].update(build_order=["b10"]), r"^s1.json ran builds b72, s2.json b10$"),
    (lambda s: s[2][1].update(builds={"b72": {"version_line": "QEMU emulator version 7.2.23"}}),
     r"^build b72 is 'QEMU emulator version 7.2.22' in s1.json "
     r"but 'QEMU emulator version 7.2.23' in s3.json$"),
    (lambda s: s[1][1]["tests"].update({"o.py::t[file-rw]": _test("passed", "file-rw")}),
     r"^o.py::t\[file-rw\] is in s1.json and in s2.json: the same case ran in two shards$"),
    (lambda s: s[0][1].pop("shard"), r"^s1.json is not the results of one shard"),
])
def test_merge_refuses_what_is_not_one_run(change: Any, error: str) -> None:
    shards = copy.deepcopy(_three())
    change(shards)
    with pytest.raises(MergeError, match=error):
        merge_documents(shards)


JUNIT = '''<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest" \
errors="{e}" failures="{f}" skipped="0" tests="{n}" time="{t}" timestamp="2026-11-29T08:0{k}:00" \
hostname="runner{k}"><properties><property name="qb.build.b72" value="{v}" /></properties>{cases}\
</testsuite></testsuites>'''


def _junit(path: Path, k: int, cases: list[str], failures: int = 0, version: str = "QEMU 7.2.22") -> str:
    body = "".join(f'<testcase classname="suites.test_open" name="{c}" time="0.1" />' for c in cases)
    path.write_text(JUNIT.format(e=0, f=failures, n=len(cases), t=float(k), k=k, v=version, cases=body))
    return str(path)


def test_junit_merge_sums_counts_and_keeps_properties_once(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    a = _junit(tmp_path / "a.xml", 1, ["t[x]", "t[y]"], failures=1)
    b = _junit(tmp_path / "b.xml", 2, ["t[z]"])
    out = merge_junit([a, b])
    assert out.startswith(b'<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">')
    suite = ET.fromstring(out).find("testsuite")
    assert suite is not None
    assert {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time", "hostname")} == \
        {"tests": "3", "failures": "1", "errors": "0", "skipped": "0", "time": "2.000",
         "hostname": "runner1,runner2"}
    assert suite.get("timestamp") == "2026-11-29T08:01:00"
    assert [p.get("name") for p in suite.iter("property")] == ["qb.build.b72"]
    assert [c.get("name") for c in suite.iter("testcase")] == ["t[x]", "t[y]", "t[z]"]


def test_junit_merge_refuses_a_case_twice_or_different_builds(tmp_path: Path) -> None:
    a = _junit(tmp_path / "a.xml", 1, ["t[x]"])
    with pytest.raises(ResultsError, match=r"suites.test_open::t\[x\] is in .*a.xml and in .*b.xml"):
        merge_junit([a, _junit(tmp_path / "b.xml", 2, ["t[x]"])])
    with pytest.raises(ResultsError, match=r"suite property qb.build.b72 is 'QEMU 7.2.22' in .* but "
                                           r"'QEMU 10.0.2' in .*c.xml"):
        merge_junit([a, _junit(tmp_path / "c.xml", 3, ["t[y]"], version="QEMU 10.0.2")])
    (tmp_path / "bad.xml").write_text("<html/>")
    with pytest.raises(ResultsError, match="is not a pytest --junitxml file"):
        merge_junit([str(tmp_path / "bad.xml")])


def test_merge_command_writes_both_and_refuses_its_own_output(tmp_path: Path, capsys: Any) -> None:
    files = []
    for name, doc in _three():
        (tmp_path / name).write_text(json.dumps(doc))
        files.append(str(tmp_path / name))
    xmls = [_junit(tmp_path / f"s{k}.xml", k, [f"t[{k}]"]) for k in (1, 2, 3)]
    out, xml = str(tmp_path / "m.json"), str(tmp_path / "m.xml")
    assert merge_main([out, *files, "--junitxml", xml, *xmls]) == 0
    assert capsys.readouterr().out == (f"qemublock-merge: 3 shards -> {out}: 5 cases (3 passed, 1 failed, "
                                       f"1 xfailed); JUnit -> {xml}\n")
    assert len(json.loads(Path(out).read_text())["tests"]) == 5
    assert Path(xml).read_bytes().count(b"<testcase ") == 3
    with pytest.raises(SystemExit) as e:
        merge_main([files[0], *files])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"{files[0]} is both the output and one of the shards' files")
