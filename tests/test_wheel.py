"""The wheel: built from this checkout, installed into a clean venv, it runs suite cases.

What an editable install cannot show: that the package data (the image recipes,
``py.typed``) is in the wheel, and that the plugin works when loaded through its
pytest11 entry point from site-packages, with no checkout on ``sys.path``.
The dependencies come from the package index through pip (its cache makes a
rerun fast); without a network the test is skipped, on pip's own network error.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import NETWORK_ERROR

pytestmark = [pytest.mark.wheel, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
#: what a checkout holds that is not source: never copied into the build tree
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
              "qemublock-evidence", "qemublock-results*.json")
#: files the wheel must carry besides the modules
PACKAGE_DATA = ("pytest_qemublock/storage/recipes.toml", "pytest_qemublock/py.typed",
                "pytest_qemublock/reporting/report.html")
#: bounded waits for pip when the network is down (the environment may set a 180 s timeout)
PIP_ENV = {"PIP_RETRIES": "1", "PIP_TIMEOUT": "20", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
#: the suite cases run with the installed plugin: a handful of seconds
CASES = ("test_smoke.py", "test_open.py")
SELECT = "file-rw-proto-blockdev or test_smoke"
#: printed by the inner run's conftest: the file pytest loaded the qemublock entry point from
CONFTEST = '''
def pytest_report_header(config):
    plugin = config.pluginmanager.get_plugin("qemublock")
    return f"qemublock plugin: {plugin.__file__ if plugin else None}"
'''


def _clean_env() -> dict[str, str]:
    """The outer environment without what would put the checkout or the outer run in the way."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV"} and not k.startswith("PYTEST_")}
    return env | PIP_ENV


def _run(argv: list[str | Path], cwd: Path, timeout: float, what: str,
         network: bool = False) -> subprocess.CompletedProcess[str]:
    """Run *argv*; on failure skip if pip could not reach the index (*network*), else fail."""
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=_clean_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        found = NETWORK_ERROR.search(proc.stdout) if network else None
        if found:
            errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("ERROR:")]
            pytest.skip(f"no network to the package index ({found.group(0)}): {what} failed"
                        + (f": {errors[-1][:200]}" if errors else ""))
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc


def test_wheel_installs_and_runs_suites(tmp_path: Path) -> None:
    pytest.importorskip("build", reason="needs the test extra: pip install -e '.[test]'")
    # A copy, so that the build's egg-info and build/ never land in the checkout.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_SOURCE), symlinks=True)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", dist, src], tmp_path, 300,
         "python -m build --wheel", network=True)
    wheels = list(dist.glob("pytest_qemublock-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {dist}, found {[w.name for w in wheels]}"
    wheel = wheels[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in PACKAGE_DATA if f not in names]
    assert not missing, f"{wheel.name} lacks package data {missing}"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path, 120, "python -m venv")
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", wheel], tmp_path, 600, f"pip install {wheel.name}",
         network=True)
    site = _run([python, "-c", "import pytest_qemublock, sys; print(pytest_qemublock.__file__)"],
                tmp_path, 60, "import pytest_qemublock").stdout.strip()
    installed = Path(site).parent
    assert installed.is_relative_to(venv), f"pytest_qemublock imported from {installed}, not from {venv}"
    for f in PACKAGE_DATA:
        assert (installed.parent / f).is_file(), f"installed package lacks {f} (in {installed})"

    # A suite directory of one's own, outside the checkout: no ini, no rootdir conftest
    # of the project; only the conftest that reports where the plugin came from.
    project = tmp_path / "project"
    project.mkdir()
    for name in CASES:
        shutil.copy(ROOT / "suites" / name, project / name)
    (project / "conftest.py").write_text(CONFTEST)
    # Not -q: the header (with the plugin's file) is only printed at normal verbosity.
    proc = _run([python, "-m", "pytest", "-p", "no:cacheprovider", "-k", SELECT, *CASES],
                project, 300, "pytest with the installed plugin")
    loaded = re.search(r"^qemublock plugin: (.*)$", proc.stdout, re.M)
    assert loaded, f"inner run printed no plugin header:\n{proc.stdout[-2000:]}"
    plugin_file = Path(loaded.group(1))
    assert plugin_file.is_relative_to(installed), (
        f"the qemublock entry point was loaded from {plugin_file}, not from the wheel in {installed}")
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 10 and re.search(r"failed|error|skipped", summary) is None, (
        f"expected >= 10 cases passed and none failed, errored or skipped: {summary}")
