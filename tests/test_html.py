"""The HTML report as a person sees it: a real run rendered by headless Chromium.

A copy of ``suites/test_open.py`` runs a small slice of the open matrix on both
builds against real QEMU and qemu-nbd: file-erofs and file-rw through ``-blockdev``,
and the read-only NBD export case that carries known bug nbd-ro-export-message-lost
(xfailed on both builds). Its conftest (the suites' own, plus a few lines) gives
one case a deliberately wrong expectation on the 7.x build only, so the run has a
failure with a QEMU error on stderr and a difference between builds. The page
``--qb-html`` wrote is opened with Debian's ``chromium --headless=new`` in a fresh
network and PID namespace (so it renders offline and leaves nothing behind); the
asserts read the DOM Chromium dumps after the page's script ran, and the
screenshot is kept (``qemublock-evidence/report-screenshot.png`` under the test's
tmp dir, copied to ``$QB_ARTIFACT_DIR`` when set).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers import BASE_ARGS, LEAKY_ENV, wait_gone

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium")
SELECT = "proto-blockdev and (file-erofs or file-rw) or export_message and nbd-qemu-nbd-unix"
WRONG = "file-erofs-proto-blockdev-ro_off-aro_off"
FAILING = f"test_open.py::test_open[v7.2-{WRONG}]"
XFAILED = [f"test_open.py::test_read_only_export_message[{b}-nbd-qemu-nbd-unix-ro-proto-qmp-ro_off-aro_off"
           f"-export_message]" for b in ("v7.2", "v10.0")]
WINDOW = (1280, 900)

#: appended to the copy of suites/conftest.py: one wrong expectation, on the 7.x build
WRONG_RULE = f'''

from pytest_qemublock import expectations as _expectations

_real_expect_open = _expectations.expect_open


def _wrong_expect_open(case, target, caps):
    exp = _real_expect_open(case, target, caps)
    if case.id == "{WRONG}" and caps.version[0] == 7:
        return exp.replace(ok=True, error=None, ro={{"n0": False}},
                           because="deliberately wrong <expectation> of tests/test_html.py")
    return exp


_expectations.expect_open = _wrong_expect_open
'''


@dataclass
class Node:
    """An element of the dumped DOM."""

    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find(self, pred: Callable[[Node], bool]) -> Iterator[Node]:
        for c in self.children:
            if isinstance(c, Node):
                if pred(c):
                    yield c
                yield from c.find(pred)

    def select(self, tag: str, cls: str = "", **attrs: str) -> list[Node]:
        return list(self.find(lambda n: n.tag == tag and (not cls or cls in n.classes)
                              and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())))


class _Builder(HTMLParser):
    VOID = {"meta", "input", "br", "img", "link", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    b = _Builder()
    b.feed(html)
    return b.root


def chromium(tmp: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium in a network namespace of its own (no network: the page must need
    none) and a PID namespace that takes every Chromium process with it when it ends."""
    unshare = ["unshare", "--net", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        unshare.insert(1, "--map-root-user")
    cmd = [*unshare, CHROMIUM or "chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
           "--no-first-run", f"--user-data-dir={tmp / 'chromium-profile'}", *extra, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


def inner_run(d: Path, qemu10: Path) -> None:
    """Run the slice in *d*, writing ``r.json`` and ``report.html``."""
    shutil.copy(ROOT / "suites" / "test_open.py", d / "test_open.py")
    (d / "conftest.py").write_text((ROOT / "suites" / "conftest.py").read_text() + WRONG_RULE)
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV} | {"QB_TEST_TOKEN": token}
    cmd = [sys.executable, "-m", "pytest", *BASE_ARGS, "-p", "no:cacheprovider", "-n", "2", "-k", SELECT,
           f"--qb-basetemp={d / 'qbwork'}", "--qemu-build", "v7.2=/", "--qemu-build", f"v10.0={qemu10}",
           "--qb-results", "r.json", "--qb-html", "report.html", "test_open.py"]
    proc = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=300, check=False)
    left = wait_gone(token, 5, ("qemu", "nbdkit"))
    assert not left, f"the inner run left {left}"
    assert proc.returncode == 1, (f"inner run exited {proc.returncode}:\n"
                                  f"{proc.stdout[-4000:]}{proc.stderr[-2000:]}")
    assert (d / "report.html").is_file(), proc.stdout[-2000:]


def test_report_as_rendered(tmp_path: Path, qemu10: Path) -> None:
    """One inner run (the slice takes seconds, but runs once), then each view of it."""
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium to render the report (apt-get install chromium; "
                    "scripts/setup.sh installs it)")
    inner_run(tmp_path, qemu10)
    screenshot(tmp_path)  # first: it shows what went wrong when a check below fails
    check_results_file(tmp_path)
    dom = parse(chromium(tmp_path, (tmp_path / "report.html").as_uri(), "--dump-dom").stdout)
    check_matrix(dom)
    check_build_diff(dom)
    check_failing_case(dom)
    check_xfailed_case(dom)
    check_filter_from_url(tmp_path)
    check_results_file_renders_the_same_page(tmp_path)


def check_results_file(run: Path) -> None:
    tests = json.loads((run / "r.json").read_text())["tests"]
    outcomes = {n: t["outcome"] for n, t in tests.items() if t["outcome"] != "passed"}
    assert outcomes == {FAILING: "failed", **{x: "xfailed" for x in XFAILED}}
    assert len(tests) == 38, sorted(tests)  # 9 file-erofs + 9 file-rw + 1 export case, per build
    assert {n for n, t in tests.items() if "evidence" in t} == set(outcomes)  # green cases stay small
    ev = tests[FAILING]["evidence"]
    [finding] = ev["findings"]
    assert finding["because"] == "deliberately wrong <expectation> of tests/test_html.py"
    assert finding["did"].startswith("failed: Could not open '") and "Read-only file system" in finding["did"]


def check_matrix(dom: Node) -> None:
    def cell(backend: str, build: str) -> Node:
        [c] = dom.select("td", "cell", data_pick=f"backend={backend} scenario=open build={build}")
        return c

    erofs7, erofs10 = cell("file-erofs", "v7.2"), cell("file-erofs", "v10.0")
    assert (erofs7.text(), erofs7.classes) == ("8✓ 1F", {"cell", "o-failed"})
    assert (erofs10.text(), erofs10.classes) == ("9✓", {"cell", "o-passed"})
    assert (cell("file-rw", "v7.2").text(), cell("file-rw", "v10.0").text()) == ("9✓", "9✓")
    nbd = cell("nbd-qemu-nbd-unix-ro", "v10.0")
    assert (nbd.text(), nbd.classes) == ("1x", {"cell", "o-xfailed"})


def check_build_diff(dom: Node) -> None:
    [row] = dom.select("tr", "item")
    cells = [td.text().strip() for td in row.select("td")]
    assert cells == [FAILING.replace("v7.2-", ""), "failed", "passed"]
    assert "1 of 19 cases end differently" in dom.select("p", id="diff-summary")[0].text()


def check_failing_case(dom: Node) -> None:
    [case] = [c for c in dom.select("details", "case") if FAILING in c.select("summary")[0].text()]
    assert "open" in case.attrs and "o-failed" in case.classes
    rows = {tr.select("th")[0].text(): tr.select("td")[0].text() for tr in case.select("tr")
            if tr.select("th") and tr.select("td")}
    assert rows["expected"] == "succeeds, then n0.ro=False"
    assert rows["rule (because)"] == "deliberately wrong <expectation> of tests/test_html.py"
    assert rows["QEMU did"].startswith("failed: Could not open '") and rows["QEMU did"].endswith(
        "': Read-only file system")
    [cmd] = case.select("pre", "cmd")
    assert "qemu-system-x86_64 -M none " in cmd.text() and "-blockdev '{\"driver\": \"file\"" in cmd.text()
    [stderr] = case.select("pre", "stderr")
    assert stderr.text().startswith("qemu-system-x86_64: -blockdev {") and stderr.text().endswith(
        "': Read-only file system")


def check_xfailed_case(dom: Node) -> None:
    cases = {c.select("summary")[0].text(): c for c in dom.select("details", "case")}
    [case] = [c for s, c in cases.items() if XFAILED[1] in s]
    assert "o-xfailed" in case.classes
    text = case.text()
    assert "known bug nbd-ro-export-message-lost" in " ".join(text.split())
    assert "fails with exactly 'NBD export is read-only'" in text  # the expectation
    assert "failed: [GenericError] Could not open image: Permission denied" in text  # what QEMU did
    [qmp] = case.select("pre", "qmp")
    assert '> {"execute":"blockdev-add"' in qmp.text() and "Permission denied" in qmp.text()


def check_filter_from_url(run: Path) -> None:
    url = (run / "report.html").as_uri() + "#filter=outcome%3Dxfailed%20v10.0"
    dom = parse(chromium(run, url, "--dump-dom").stdout)
    cases = dom.select("details", "case")
    visible = [c.select("summary")[0].text() for c in cases if "hidden" not in c.classes]
    assert [s.split()[-1] for s in visible] == [XFAILED[1]]
    assert dom.select("span", id="shown")[0].text() == "1 of 3 listed cases match"
    cells = [c for c in dom.select("td", "cell") if "data-pick" in c.attrs]  # not the empty ones
    dimmed = {c.attrs["data-pick"] for c in cells if "dim" in c.classes}
    lit = {c.attrs["data-pick"] for c in cells if "dim" not in c.classes}
    # the one cell with an xfail on v10.0, and the (all) row's
    assert lit == {"backend=nbd-qemu-nbd-unix-ro scenario=open build=v10.0", "scenario=open build=v10.0"}, lit
    assert "backend=file-erofs scenario=open build=v7.2" in dimmed


def screenshot(run: Path) -> None:
    shot = run / "qemublock-evidence" / "report-screenshot.png"
    shot.parent.mkdir(exist_ok=True)
    chromium(run, (run / "report.html").as_uri(), f"--screenshot={shot}",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", "--hide-scrollbars")
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{shot} is not a PNG"
    assert struct.unpack(">II", head[16:24]) == WINDOW
    if os.environ.get("QB_ARTIFACT_DIR"):
        dest = Path(os.environ["QB_ARTIFACT_DIR"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / shot.name)


def check_results_file_renders_the_same_page(run: Path) -> None:
    subprocess.run([Path(sys.executable).parent / "qemublock-html", "r.json", "-o", "again.html"],
                   cwd=run, check=True, capture_output=True, timeout=60)
    assert (run / "again.html").read_text() == (run / "report.html").read_text()
