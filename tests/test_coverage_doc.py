"""docs/coverage.md stays true: generated from docs/coverage.toml, naming tests that exist.

* the page is exactly what ``scripts/coverage-doc.py`` makes from the source;
* every test id (glob) the source lists is collected by ``pytest suites`` on each build it
  names (one collection with both builds, a few seconds);
* every covered/partly entry lists a test, every untested/not-observable one says why.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from helpers import QEMU10_DIR

ROOT = Path(__file__).resolve().parent.parent
COLLECT_TIMEOUT = 120


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("coverage_doc", ROOT / "scripts" / "coverage-doc.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gen = _generator()


@pytest.fixture(scope="module")
def entries() -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = gen.load()
    return loaded


@pytest.fixture(scope="module")
def collected() -> list[str]:
    """The node ids of ``pytest suites --collect-only`` with both builds."""
    if not (QEMU10_DIR / "usr/bin/qemu-system-x86_64").is_file():
        pytest.skip(f"no QEMU 10.0 build at {QEMU10_DIR} (scripts/fetch-qemu-build.sh; "
                    f"or set QB_TEST_QEMU10)")
    cmd = [sys.executable, "-m", "pytest", "suites", "--collect-only", "-q", "-p", "no:cacheprovider",
           "--qemu-build", "v7.2=/", "--qemu-build", f"v10.0={QEMU10_DIR}"]
    res = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=COLLECT_TIMEOUT)
    assert res.returncode == 0, (f"{' '.join(cmd)} exited {res.returncode}:\n"
                                 f"{res.stdout[-3000:]}{res.stderr[-3000:]}")
    ids = [line for line in res.stdout.splitlines() if "::" in line]
    assert ids, f"{' '.join(cmd)} collected nothing:\n{res.stdout[-3000:]}"
    return ids


def test_doc_is_generated_from_the_source(entries: list[dict[str, Any]]) -> None:
    want = gen.render(entries)
    got = gen.DOC.read_text()
    assert got == want, (f"{gen.DOC.relative_to(ROOT)} is not what scripts/coverage-doc.py makes from "
                         f"{gen.SOURCE.relative_to(ROOT)}: edit the .toml and run "
                         f"python3 scripts/coverage-doc.py")


def test_every_listed_test_exists_on_its_builds(entries: list[dict[str, Any]], collected: list[str]) -> None:
    builds = {gen.split_build(n)[0] for n in collected}
    assert builds == set(gen.BUILDS), f"collection ran on builds {builds}, expected {set(gen.BUILDS)}"
    gone = [f"{e['commit']} ({e['subject']}): {t['id']} matches no test collected on {build}"
            for e in entries for t in e.get("tests", []) for build in t["builds"]
            if not gen.matches(t["id"], build, collected)]
    assert not gone, ("docs/coverage.toml lists tests that `pytest suites --collect-only` does not have "
                      "(renamed or removed? update the .toml and regenerate):\n" + "\n".join(gone))


def test_every_entry_has_its_tests_or_its_why(entries: list[dict[str, Any]]) -> None:
    bad = gen.problems(entries)
    assert not bad, "docs/coverage.toml:\n" + "\n".join(bad)
