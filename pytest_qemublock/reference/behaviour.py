"""The expected-behaviour reference (docs/expectations.md), generated from the expectations.

``pytest --qb-expectations`` evaluates the rules of :mod:`pytest_qemublock.expectations`
over their scenario's whole matrix for each build's probed capabilities and prints
the folded tables (:mod:`.tables`), so the reference cannot drift from the code.
No server starts: the rules read only a target's driver, storage and error fields,
so each backend-storage pair gets a placeholder :class:`~..backends.base.Target`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path

from ..backends import drivers
from ..backends.base import Target
from ..backends.registry import REGISTRY
from ..expectations import degrade, expect_open, reopen
from ..qemu.capabilities import Capabilities
from ..scenario.matrix import INTERFACES, TRISTATE, Case
from ..scenario.outcome import Expect
from ..storage.images import Image
from ..storage.local import EaccesStorage, ErofsStorage, Storage
from .tables import ANY, Row, Table, citations, fold, render

#: the placeholder for the image's path in every error text
IMAGE_PATH = "<image>"
#: strerror of a refused read-write open, per local storage kind (the file backends)
STRERROR = {s.kind: s.error_text for s in (Storage, ErofsStorage, EaccesStorage)}

REGENERATE = ("pytest -p no:cacheprovider --qb-expectations --qemu-build v7.2=/ "
              "--qemu-build v10.0=/var/cache/pytest-qemublock/qemu-10.0 > docs/expectations.md")

RESULTS = ("expected", "because", "cites", "depends on")


class RecordingCaps(Capabilities):
    """A build's capabilities that note which of them a rule asked for."""

    asked: list[str]

    @classmethod
    def of(cls, caps: Capabilities) -> RecordingCaps:
        rec = cls(**asdict(caps))
        rec.asked = []
        return rec

    def _note(self, what: str, answer: bool) -> bool:
        self.asked.append(f"{what}: {'yes' if answer else 'no'}")
        return answer

    def has_command(self, name: str) -> bool:
        return self._note(f"command {name}", super().has_command(name))

    def has_feature(self, where: str, feature: str) -> bool:
        return self._note(f"{where}:{feature}", super().has_feature(where, feature))

    def driver_loads(self, driver: str) -> bool:
        return self._note(f"driver {driver} loads", super().driver_loads(driver))


def placeholder_target(backend: str, storage: str) -> Target:
    """What the rules read of a target of *backend* on *storage*, without starting anything."""
    path = Path(IMAGE_PATH)
    return Target(backend, storage, REGISTRY[backend].driver, Image(path, "raw", "1M"),
                  {"path": IMAGE_PATH}, fd_path=path, error_text=STRERROR.get(storage))


def _results(rule: Callable[[RecordingCaps], Expect], caps: Capabilities) -> tuple[str, ...]:
    rec = RecordingCaps.of(caps)
    exp = rule(rec)
    return exp.describe(), exp.because, citations(exp.because), ", ".join(dict.fromkeys(rec.asked))


def _fixed(exp: Expect) -> Callable[[Capabilities], Expect]:
    """A rule that asks no capability."""
    return lambda _caps: exp


def _pairs(readonly_only: bool = False) -> list[tuple[str, str]]:
    return [(name, st) for name, b in REGISTRY.items() for st in b.storages
            if not readonly_only or st != "rw"]


def _tri(value: bool | None) -> str:
    return "unset" if value is None else ("on" if value else "off")


def open_table(caps: Capabilities) -> Table:
    """expectations/open.py over suites/test_open.py's matrix."""
    t = Table("Open (suites/test_open.py, expectations/open.py)",
              "Node `n0` opened with the case's read-only / auto-read-only options; with `qcow2`, "
              "`n0` is the format node over an inline protocol child `p0`.",
              ("backend-storage", "format", "interface", "read-only", "auto-read-only"), RESULTS)
    for backend, storage in _pairs():
        target = placeholder_target(backend, storage)
        for fmt in ("proto", "qcow2"):
            for iface in INTERFACES:
                for ro in TRISTATE:
                    for aro in TRISTATE:
                        case = Case(backend, storage, fmt, iface, ro, aro, set_ro=True)
                        t.add((f"{backend}-{storage}", fmt, iface, _tri(ro), _tri(aro)),
                              _results(partial(expect_open, case, target), caps))
    return t


def degraded_table(caps: Capabilities) -> Table:
    """expectations/degrade.py: the degraded open and the writers that attach to it."""
    t = Table("Degrade: the open (suites/test_degrade.py, expectations/degrade.py expect_degraded)",
              "read-only=off with auto-read-only on (explicit, or `-drive`'s default) on read-only "
              "storage whose driver degrades.",
              ("backend-storage", "format", "interface", "auto-read-only"), RESULTS)
    for backend, storage in _pairs(readonly_only=True):
        target = placeholder_target(backend, storage)
        if not drivers.honours_auto_read_only(target):
            continue
        for fmt in ("proto", "raw"):
            for iface in INTERFACES:
                aro = None if iface == "drive" else True
                case = Case(backend, storage, fmt, iface, False, aro, set_ro=True)
                t.add((f"{backend}-{storage}", fmt, iface, _tri(aro)),
                      _results(partial(degrade.expect_degraded, case, target), caps))
    return t


def writers_table(caps: Capabilities) -> Table:
    t = Table("Degrade: writers attaching to the degraded node (expect_writer_refused)",
              "`export`: block-export-add writable=true; `hmp-qemu-io`: HMP qemu-io write.",
              ("backend-storage", "format", "writer"), RESULTS)
    for backend, storage in _pairs(readonly_only=True):
        target = placeholder_target(backend, storage)
        if not drivers.honours_auto_read_only(target):
            continue
        for fmt in ("proto", "raw"):
            case = Case(backend, storage, fmt, "qmp", False, True, set_ro=True)
            for writer in degrade.WRITERS:
                t.add((f"{backend}-{storage}", fmt, writer),
                      _results(_fixed(degrade.expect_writer_refused(case, target, writer)), caps))
    return t


def refused_table(caps: Capabilities) -> Table:
    t = Table("Degrade: refused opens and the read-only retry (expect_refused, expect_retry_read_only)",
              "read-only=off over QMP where nothing lets the open happen, then the same node name "
              "at once with read-only=on.",
              ("backend-storage", "format", "auto-read-only", "step"), RESULTS)
    for backend, storage in _pairs(readonly_only=True):
        target = placeholder_target(backend, storage)
        for fmt, aro in (("proto", False), ("qcow2", True)):
            case = Case(backend, storage, fmt, "qmp", False, aro, set_ro=True)
            axes = (f"{backend}-{storage}", fmt, _tri(aro))
            t.add((*axes, "open"),
                  _results(_fixed(degrade.expect_refused(case, target)), caps))
            t.add((*axes, "retry read-only=on"),
                  _results(_fixed(degrade.expect_retry_read_only(case, target)), caps))
    return t


#: the option sets suites/test_reopen.py reopens a protocol node to
REOPEN_TO: tuple[dict[str, bool], ...] = (
    {"read-only": False, "auto-read-only": False}, {"read-only": False},
    {"read-only": False, "auto-read-only": True}, {"read-only": True}, {})


def reopen_table(caps: Capabilities) -> Table:
    """expectations/reopen.py expect_reopen: a protocol node with no parents reopened."""
    t = Table("Reopen (suites/test_reopen.py, expectations/reopen.py expect_reopen)",
              "`blockdev-reopen` of the protocol node `n0` (no parents, no writers); the suite runs "
              "where the build has the command. A refused reopen also leaves the node as it was.",
              ("backend-storage", "reopen to"), RESULTS)
    for backend, storage in _pairs():
        target = placeholder_target(backend, storage)
        for opts in REOPEN_TO:
            t.add((f"{backend}-{storage}", reopen.describe(opts)),
                  _results(partial(_reopen, target, opts), caps))
    return t


def _reopen(target: Target, opts: dict[str, bool], caps: Capabilities) -> Expect:
    # the rule does not read the state before (a node opened read-only is one every storage opens)
    start = reopen.expect_start(target, caps, {"read-only": True})
    return reopen.expect_reopen(target, caps, start, opts)


def drivers_table() -> Table:
    """backends/drivers.py, one row per protocol driver (the same for every build)."""
    t = Table("Per-driver facts (backends/drivers.py)", "The same for every build; `<strerror>` is "
              "the storage's error (file backends: per storage kind).",
              ("driver",), ("degrades under auto-read-only", "refused read-write open", "refused reopen "
                            "to read-write", "loadable module", "cites"))
    for d in drivers.DRIVERS.values():
        target = Target("-", "ro", d.name, Image(Path(IMAGE_PATH), "raw", "1M"), {"path": IMAGE_PATH},
                        fd_path=Path(IMAGE_PATH), error_text="<strerror>")
        refused = Expect(False, error=drivers.refused_open(target)).describe()
        reopen = Expect(False, error=drivers.refused_reopen_rw(target, "<node>")).describe()
        t.add((d.name,), (f"{'yes' if d.degrades else 'no'}: {d.degrades_in}",
                          f"{refused} ({d.refused_open_in})", f"{reopen} ({d.reopen_in})",
                          "yes (qemu-block-extra)" if d.module else "no",
                          citations(" ".join((d.degrades_in, d.refused_open_in, d.reopen_in)))))
    return t


#: the build-dependent tables, each with its fold order (the backends fold first)
SCENARIOS: tuple[tuple[Callable[[Capabilities], Table], tuple[str, ...]], ...] = (
    (open_table, ("backend-storage", "interface", "auto-read-only", "read-only", "format")),
    (degraded_table, ("backend-storage", "interface", "auto-read-only", "format")),
    (writers_table, ("backend-storage", "writer", "format")),
    (refused_table, ("backend-storage", "format", "auto-read-only", "step")),
    (reopen_table, ("backend-storage", "reopen to")),
)


def abbreviate(cell: str) -> str:
    """A folded backend-storage cell with every backend of one driver on one storage kind
    written as the ``--backend`` glob that selects them (``nbd-*-ro``; ``nbd-*`` for all kinds)."""
    if cell == ANY:
        return cell
    values = cell.split(", ")
    families: dict[str, list[str]] = {}
    for name, b in REGISTRY.items():
        families.setdefault(b.driver, []).append(name)
    out = list(values)
    for driver, names in families.items():
        if len(names) < 2 or not all(n.startswith(f"{driver}-") for n in names):
            continue
        pairs = [f"{n}-{st}" for n in names for st in REGISTRY[n].storages]
        kinds = list(dict.fromkeys(st for n in names for st in REGISTRY[n].storages))
        covered = [k for k in kinds if all(p in values for p in pairs if p.endswith(f"-{k}"))]
        globs = [f"{driver}-*"] if covered == kinds else [f"{driver}-*-{k}" for k in covered]
        gone = {p for p in pairs if any(p.endswith(f"-{k}") for k in covered)}
        if globs:
            first = min(out.index(p) for p in gone)
            out = out[:first] + globs + [v for v in out[first:] if v not in gone]
    return ", ".join(out)


def _abbreviated(table: Table) -> Table:
    table.rows = [Row((abbreviate(r.axes[0]), *r.axes[1:]), r.results) for r in table.rows]
    return table


def build_line(name: str, caps: Capabilities) -> str:
    version = ".".join(map(str, caps.version))
    unloaded = sorted(d for d, err in caps.driver_errors.items() if err is not None)
    return (f"- **{name}**: QEMU {version} ({caps.package or 'no package string'}); "
            f"loadable drivers that do not load: {', '.join(unloaded) or 'none'}")


def document(builds: Sequence[tuple[str, Capabilities]]) -> str:
    """docs/expectations.md for *builds* (name, probed capabilities)."""
    out = ["# Expected behaviour", "",
           "Generated from the rules in `pytest_qemublock/expectations/` and the driver facts in "
           "`pytest_qemublock/backends/drivers.py` for each build's probed capabilities; do not edit. "
           "Regenerate with:", "", "```", REGENERATE, "```", "",
           "Builds:", "", *(build_line(n, c) for n, c in builds), "",
           "Rows with equal outcomes are folded: a cell lists the values a row stands for, `any` "
           "means every value of that column, `nbd-*-ro` every nbd backend on `ro` storage (the "
           "`--backend` glob that selects them). `<image>` stands for the image's path. *depends on* "
           "names the probed capability a row's rule asked for and its answer.", ""]
    for make, order in SCENARIOS:
        tables = [(name, _abbreviated(fold(make(caps), order))) for name, caps in builds]
        if all(t.rows == tables[0][1].rows for _, t in tables):
            t = tables[0][1]
            t.title += f" — builds {', '.join(n for n, _ in tables)} alike"
            out.append(render(t, 2))
            continue
        for name, t in tables:
            t.title += f" — build {name}"
            out.append(render(t, 2))
    out.append(render(drivers_table(), 2))
    return "\n".join(out)
