"""The case matrix: stable, readable parameter ids and selection.

Ids are built from static data only (never from probing), so every xdist
worker collects exactly the same items. Each case also exports its axes as
``qb.*`` user properties, which end up in JUnit XML and in the matrix summary.
"""
from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, fields

import pytest

#: A marker whose registered description starts with this is a scenario (select with
#: ``-m reopen``). The suites register theirs (suites/conftest.py), one per module.
SCENARIO_PREFIX = "qemublock scenario:"

INTERFACES = ("blockdev", "drive", "qmp", "qsd")
#: image formats of the cases (``proto``: the protocol node alone, ``chain``: a backing chain)
FORMATS = ("raw", "qcow2", "chain", "proto")
TRISTATE = (True, False, None)  # on / off / unset


def tristate_id(name: str, value: bool | None) -> str:
    return f"{name}_{'unset' if value is None else ('on' if value else 'off')}"


@dataclass(frozen=True)
class Case:
    """One point of the matrix. Fields left ``None`` are not part of the id."""

    backend: str
    storage: str
    fmt: str | None = None
    interface: str | None = None
    ro: bool | None = None
    aro: bool | None = None
    variant: str | None = None
    set_ro: bool = False  # include ro/aro in the id (they are axes of this case)

    @property
    def id(self) -> str:
        parts = [self.backend, self.storage]
        if self.fmt:
            parts.append(self.fmt)
        if self.interface:
            parts.append(self.interface)
        if self.set_ro:
            parts += [tristate_id("ro", self.ro), tristate_id("aro", self.aro)]
        if self.variant:
            parts.append(self.variant)
        return "-".join(parts)

    def __str__(self) -> str:
        return self.id

    def properties(self) -> dict[str, str]:
        props = {"backend": f"{self.backend}-{self.storage}"}
        if self.fmt:
            props["format"] = self.fmt
        if self.interface:
            props["interface"] = self.interface
        return props

    def options(self) -> dict[str, bool]:
        """The read-only / auto-read-only options this case sets (unset ones omitted)."""
        out = {}
        if self.ro is not None:
            out["read-only"] = self.ro
        if self.aro is not None:
            out["auto-read-only"] = self.aro
        return out

    def describe(self) -> str:
        names = [f.name for f in fields(self) if f.name not in ("set_ro",)]
        return ", ".join(f"{n}={getattr(self, n)}" for n in names if getattr(self, n) is not None)


def backend_storages(backends: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """(backend, storage) pairs of the registry, in a stable order."""
    from ..backends.registry import REGISTRY

    out = []
    for name, b in REGISTRY.items():
        if backends is not None and name not in backends:
            continue
        for st in b.storages:
            out.append((name, st))
    return out


def cases(**axes: Iterable[object]) -> list[pytest.param]:  # type: ignore[valid-type]
    """Cartesian product of *axes* as ``pytest.param`` objects with ids.

    ``backend_storage`` takes (backend, storage) pairs; the other axes are
    :class:`Case` fields.
    """
    keys = list(axes)
    out = []
    for combo in itertools.product(*(list(axes[k]) for k in keys)):
        kw = dict(zip(keys, combo, strict=True))
        if "backend_storage" in kw:
            kw["backend"], kw["storage"] = kw.pop("backend_storage")  # type: ignore[misc]
        kw.setdefault("set_ro", "ro" in keys or "aro" in keys)
        case = Case(**kw)  # type: ignore[arg-type]
        out.append(pytest.param(case, id=case.id))
    return out


# -- collection: properties and selection ---------------------------------------


def scenario_markers(config: pytest.Config) -> set[str]:
    """Names of the registered markers described as ``qemublock scenario: ...``."""
    names = set()
    for line in config.getini("markers"):
        # "open: qemublock scenario: ..."; a marker may have a signature: "name(arg): ..."
        spec, _, text = line.partition(":")
        if text.strip().startswith(SCENARIO_PREFIX):
            names.add(spec.split("(")[0].strip())
    return names


def item_properties(item: pytest.Item, scenarios: set[str] | None = None) -> dict[str, str]:
    """The ``qb.*`` axes of a collected item (scenario, backend, format, build...)."""
    if scenarios is None:
        scenarios = scenario_markers(item.config)
    props: dict[str, str] = {}
    scenario = next((m.name for m in item.iter_markers() if m.name in scenarios), None)
    if scenario is not None:
        props["scenario"] = scenario
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        for key, value in callspec.params.items():
            if isinstance(value, Case):
                props.update(value.properties())
            elif key == "qemu_build":
                props["build"] = str(value)
    return props


def annotate_and_select(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add ``qb.*`` user properties; deselect by ``--backend`` / ``--format`` / ``--interface``."""
    wanted = {
        "backend": _patterns(config.getoption("--backend")),
        "format": _patterns(config.getoption("--format")),
        "interface": _patterns(config.getoption("--interface")),
    }
    scenarios = scenario_markers(config)
    keep, drop = [], []
    for item in items:
        props = item_properties(item, scenarios)
        for k, v in props.items():
            item.user_properties.append((f"qb.{k}", v))
        if all(_matches(props.get(axis), pats) for axis, pats in wanted.items()):
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def check_selectors(config: pytest.Config) -> None:
    """Refuse a ``--backend`` / ``--format`` / ``--interface`` pattern that matches no known
    value (a typo would otherwise deselect everything it meant and pass the rest).

    Raises :class:`pytest.UsageError` naming the valid values.
    """
    from ..backends.registry import REGISTRY

    extra: dict[str, list[str]] = {}
    for declared in config.hook.pytest_qemublock_axis_values(config=config):
        for axis, values in declared.items():
            extra.setdefault(axis, []).extend(values)
    backends = [f"{name}-{st}" for name, b in REGISTRY.items() for st in b.storages]
    formats = [*FORMATS, *extra.get("format", [])]
    interfaces = [*INTERFACES, *extra.get("interface", [])]
    known = {
        "--backend": ([*backends, *extra.get("backend", [])],
                      ", ".join([*(f"{name} ({'/'.join(b.storages)})" for name, b in REGISTRY.items()),
                                 *extra.get("backend", [])])),
        "--format": (formats, ", ".join(formats)),
        "--interface": (interfaces, ", ".join(interfaces)),
    }
    for option, (values, valid) in known.items():
        for pattern in _patterns(config.getoption(option)):
            if not any(_matches(v, [pattern]) for v in values):
                raise pytest.UsageError(f"qemublock: {option} {pattern}: matches nothing; valid: {valid}")


def _patterns(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def _matches(value: str | None, patterns: list[str]) -> bool:
    if not patterns or value is None:
        return True
    # "nbd*" matches nbd-qsd-unix-ro; "file" matches file-rw/file-erofs too.
    return any(fnmatch.fnmatchcase(value, p) or fnmatch.fnmatchcase(value, p + "-*") for p in patterns)

