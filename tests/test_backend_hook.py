"""Backends registered by other plugins through the ``pytest_qemublock_backends`` hook.

The inner project's conftest adds a backend of its own on QEMU's ``null-co``
driver (no server, no storage; ``read-zeroes=on`` reads zeroes), the way a
third-party plugin would. It must reach every place the built-ins reach:
``--qb-list-backends``, ``matrix.backend_storages()`` (so the suites
parametrize over it), ``--backend`` and ``targets.target()``.
"""
from __future__ import annotations

import re

import pytest

from pytest_qemublock.backends.registry import builtin_backends

NULL_CONFTEST = '''
from pathlib import Path

from pytest_qemublock.backends.base import Backend, Target
from pytest_qemublock.storage.images import Image


class NullBackend(Backend):
    """QEMU's null-co driver: a node without any storage behind it."""

    name = "{name}"
    driver = "null-co"
    storages = {storages!r}

    def provide(self, ctx, recipe, storage):
        image = Image(Path("/dev/null"), "raw", "1M")  # nothing to create: null-co has no file
        return Target(self.name, storage, self.driver, image,
                      {{"driver": "null-co", "read-zeroes": True, "size": 1 << 20}})


def pytest_qemublock_backends(config):
    return [NullBackend()]
'''

NULL_SUITE = '''
import json

import pytest

from pytest_qemublock.scenario import matrix


def check_null_node(vm, target):
    node = vm.nodes()["n0"]
    got = (node["drv"], node["ro"], node["image"]["virtual-size"])
    assert got == ("null-co", False, 1 << 20), node


@pytest.mark.parametrize("case", matrix.cases(backend_storage=matrix.backend_storages()))
def test_every_backend(case, targets, qemu):
    target = targets.target(case.backend, case.storage)
    vm = qemu.start("-blockdev", json.dumps(target.node("n0")), wrapper=target.wrapper)
    assert vm.nodes()["n0"]["drv"] == target.driver


def test_null_by_name(targets, qemu):
    target = targets.target("null", "rw")
    vm = qemu.start("-blockdev", json.dumps(target.node("n0")))
    check_null_node(vm, target)
'''


def _project(inner, name: str = "null", storages: tuple[str, ...] = ("rw",)) -> None:
    inner.ini()
    inner.pytester.makeconftest(NULL_CONFTEST.format(name=name, storages=storages))
    inner.suite(NULL_SUITE)


def test_hook_backend_is_listed(inner):
    _project(inner)

    r = inner.run("--qb-list-backends")

    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    rows = [line.split()[:3] for line in r.outlines[1:] if line.strip()]
    want = [[f"{b.name}-{st}", b.driver] for b in builtin_backends() for st in b.storages]
    assert [row[:2] for row in rows] == want + [["null-rw", "null-co"]], r.stdout.str()
    assert rows[-1][2] == "ok", r.stdout.str()


def test_hook_backend_is_selected_and_opens(inner):
    """``--backend null`` keeps the suite's null case and drops every built-in pair;
    the case opens a null-co node through ``targets.target`` (in xdist workers too)."""
    _project(inner)
    pairs = [f"{b.name}-{st}" for b in builtin_backends() for st in b.storages] + ["null-rw"]

    collected = inner.run("--collect-only", "-q")

    ids = [line for line in collected.outlines if line.startswith("test_suite.py::")]
    want = [f"test_suite.py::test_every_backend[{p}]" for p in pairs] + ["test_suite.py::test_null_by_name"]
    assert ids == want, collected.stdout.str()

    r = inner.run("--backend", "null", "-n", "2", "-v")

    out = r.stdout.str() + r.stderr.str()
    assert r.ret == 0, out
    assert "2 workers [2 items]" in out, out  # xdist counts what is left after --backend
    r.assert_outcomes(passed=2)
    passed = sorted(re.findall(r"PASSED (\S+)", out))
    assert passed == ["test_suite.py::test_every_backend[null-rw]", "test_suite.py::test_null_by_name"], out


KNOWN = ", ".join(b.name for b in builtin_backends())


@pytest.mark.parametrize("name, storages, expected", [
    pytest.param("file", ("rw",), "backend 'file' of conftest.NullBackend clashes with "
                 f"pytest_qemublock.backends.file.FileBackend; pick another name (known: {KNOWN})",
                 id="name-clash"),
    pytest.param("null", ("rw", "ro"), "backend 'null' of conftest.NullBackend has read-only storages "
                 "but QEMU driver 'null-co' has no entry in pytest_qemublock/backends/drivers.py",
                 id="ro-storage-without-driver-facts"),
])
def test_bad_hook_backend_is_one_usage_error(inner, name, storages, expected):
    _project(inner, name=name, storages=storages)

    r = inner.run()

    out, err = r.stdout.str(), r.stderr.str()
    assert r.ret == pytest.ExitCode.USAGE_ERROR, out + err
    lines = [line for line in r.errlines if line.strip()]
    assert lines == [f"ERROR: qemublock: {expected}"], err
    assert "Traceback" not in out + err and "INTERNALERROR" not in out + err
    assert not inner.basetemp.exists()  # stopped before anything was created


def test_module_drivers_are_probed():
    """A driver drivers.py calls a loadable module is one the probe tries to load, or the
    backend's skip would say 'not probed' on every build."""
    from pytest_qemublock.backends.drivers import DRIVERS
    from pytest_qemublock.qemu.capabilities import MODULE_DRIVERS

    modules = [d.name for d in DRIVERS.values() if d.module]
    assert modules and set(modules) <= set(MODULE_DRIVERS), (modules, MODULE_DRIVERS)
