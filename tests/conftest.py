"""Fixtures for the plugin's own tests.

Every test here runs pytest *inside* pytest (``pytester``) against the real
QEMU on this machine; nothing is mocked. The inner runs are subprocesses so
that signal handlers, atexit hooks and the process registry of the inner
session are really separate from the outer one. Plain helpers live in
``helpers.py``.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import FILENAME, LEAKY_ENV, PROBE_DIR, QEMU10_DIR, REAL, InnerRun


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The `slow` tests (a whole suite run as a user, the wheel) took ~2/3 of the
    # project tests' time: a plain run leaves them out; any -m expression decides
    # for itself (`-m slow`, or `-m 'slow or not slow'` as CI runs them).
    if not config.option.markexpr:
        slow = [item for item in items if item.get_closest_marker("slow")]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if not item.get_closest_marker("slow")]
    # Everything here needs the system QEMU; say so once, clearly, instead of
    # failing dozens of inner runs in confusing ways.
    missing = [FILENAME[r] for r in ("system", "img", "io") if not REAL[r]]
    if missing:
        skip = pytest.mark.skip(reason=f"needs QEMU installed on PATH (missing: {', '.join(missing)}; "
                                       f"Debian packages qemu-system-x86, qemu-utils)")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in LEAKY_ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def _probes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Probe files of the inner runs of this process, shared by the ones after them."""
    return tmp_path_factory.mktemp("probes")


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
          _probes: Path) -> Iterator[InnerRun]:
    """An inner pytest project using the plugin, with helpers to run it.

    Its probe cache starts with the probes earlier inner runs made: a probe (a QEMU
    launch, seven module loads) was ~30% of an inner run's CPU. A probe file is
    named after the binaries' paths, sizes and mtimes (capabilities.py), so it is
    used only for exactly those binaries. The tests of probing itself
    (``own_probe``) start without.
    """
    run = InnerRun(pytester, monkeypatch)
    own = request.node.get_closest_marker("own_probe") is not None
    cache = run.path / PROBE_DIR
    if not own:
        cache.mkdir(parents=True)
        for f in _probes.glob("probe-*.json"):
            shutil.copyfile(f, cache / f.name)
    yield run
    if not own:
        for f in cache.glob("probe-*.json"):
            if not (_probes / f.name).exists():
                shutil.copyfile(f, _probes / f.name)


@pytest.fixture
def qemu10() -> Path:
    if not (QEMU10_DIR / "usr/bin/qemu-system-x86_64").is_file():
        pytest.skip(f"no QEMU 10.0 build at {QEMU10_DIR} (scripts/fetch-qemu-build.sh; "
                    f"or set QB_TEST_QEMU10)")
    return QEMU10_DIR


