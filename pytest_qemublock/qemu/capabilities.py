"""What a QEMU build can do, probed once per binary and cached on disk.

Suites ask "does this build have X" (a QMP command, a QAPI feature, a
driver that really loads) instead of comparing version numbers. Probing costs
one QEMU launch; the result is cached in a JSON file keyed by the binaries'
path, size and mtime, shared by all xdist workers under an ``flock``.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..host.process import run
from .build import QemuBuild

PROBE_FORMAT = 4

#: Protocol drivers that Debian builds as loadable modules (qemu-block-extra).
MODULE_DRIVERS = ("http", "https", "ssh", "iscsi", "nfs", "rbd", "gluster")


@dataclass
class Capabilities:
    """Probed facts about one build."""

    version: list[int]
    package: str
    accelerators: list[str]
    machines: list[str]
    formats: list[str]
    commands: list[str]
    events: list[str]
    # object type (by its QAPI role, e.g. "BlockdevOptions.file") -> features
    features: dict[str, list[str]] = field(default_factory=dict)
    # "query-named-block-nodes" -> member names of BlockDeviceInfo
    members: dict[str, list[str]] = field(default_factory=dict)
    # protocol driver -> None if it loads, else the error text
    driver_errors: dict[str, str | None] = field(default_factory=dict)

    @property
    def accel(self) -> str:
        """``qtest`` where the build has it (no guest CPU at all), else ``tcg``."""
        return "qtest" if "qtest" in self.accelerators else "tcg"

    def has_command(self, name: str) -> bool:
        return name in self.commands

    def has_feature(self, where: str, feature: str) -> bool:
        return feature in self.features.get(where, [])

    def driver_loads(self, driver: str) -> bool:
        return self.driver_errors.get(driver, "not probed") is None

    @classmethod
    def from_json(cls, data: object) -> Capabilities:
        """Capabilities from a cache file's content; :class:`ValueError` if it does not fit
        (a file of another version, edited or half-written: then probe again)."""
        if not isinstance(data, dict) or set(data) != {f.name for f in fields(cls)}:
            raise ValueError("not the fields of Capabilities")
        for name, ok in _SHAPES.items():
            if not ok(data[name]):
                raise ValueError(f"{name}: {data[name]!r:.80} has the wrong shape")
        return cls(**data)


def _list_of(kind: type) -> Callable[[object], bool]:
    return lambda v: isinstance(v, list) and all(isinstance(x, kind) for x in v)


def _map_of(ok: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and ok(x) for k, x in v.items())


_SHAPES: dict[str, Callable[[object], bool]] = {
    "version": lambda v: _list_of(int)(v) and len(v) == 3,  # type: ignore[arg-type]
    "package": lambda v: isinstance(v, str),
    **{name: _list_of(str) for name in ("accelerators", "machines", "formats", "commands", "events")},
    "features": _map_of(_list_of(str)),
    "members": _map_of(_list_of(str)),
    "driver_errors": _map_of(lambda x: x is None or isinstance(x, str)),
}


def _fingerprint(build: QemuBuild) -> str:
    h = hashlib.sha256()
    h.update(str(PROBE_FORMAT).encode())
    for role, b in sorted(build.binaries.items()):
        st = b.path.stat()
        h.update(f"{role}:{b.path.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(build.env, sort_keys=True).encode())
    h.update(build.arch.name.encode())  # a probe checks the arch a build is taken as
    return h.hexdigest()[:20]


def load_capabilities(build: QemuBuild, cache_dir: Path,
                      probe: Callable[[QemuBuild], Capabilities]) -> Capabilities:
    """Return the cached capabilities of *build*, probing under a file lock if needed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"probe-{_fingerprint(build)}.json"
    with open(cache_dir / "probe.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.exists():
                try:
                    return Capabilities.from_json(json.loads(path.read_text()))
                except (ValueError, TypeError):
                    pass  # stale format, or not what a probe writes: probe again
            caps = probe(build)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(caps), indent=1))
            tmp.replace(path)
            return caps
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def parse_help_list(text: str) -> list[str]:
    """First word of each indented/help line, e.g. of ``-accel help``."""
    names = []
    for line in text.splitlines()[1:]:
        word = line.strip().split(" ", 1)[0]
        if word and re.fullmatch(r"[\w.-]+", word):
            names.append(word)
    return names


def static_facts(build: QemuBuild, timeout: float) -> dict[str, Any]:
    """Facts that need no QMP: accelerators, machines and formats."""
    env = build.env_for("system")
    system = build.path("system")
    accels = parse_help_list(run([system, "-accel", "help"], timeout=timeout, env=env).stdout)
    machines = parse_help_list(run([system, "-machine", "help"], timeout=timeout, env=env).stdout)
    img_help = run([build.path("img"), "--help"], timeout=timeout, env=build.env_for("img")).stdout
    return {"accelerators": accels, "machines": machines, "formats": parse_formats(img_help)}


def parse_formats(img_help: str) -> list[str]:
    """The format list of ``qemu-img --help``: one line after ``Supported formats:`` up to 9.x,
    an indented paragraph after ``Supported image formats:`` (and a blank line) since 10.0."""
    m = re.search(r"Supported (?:image )?formats:[ \t]*\n?(.*?)(?:\n[ \t]*\n|\Z)", img_help, re.S)
    return m.group(1).split() if m else []


class Schema:
    """Navigation in ``query-qmp-schema`` output (type names there are opaque numbers)."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.by_name = {e["name"]: e for e in entries}
        self.entries = entries

    def commands(self) -> list[str]:
        return sorted(e["name"] for e in self.entries if e.get("meta-type") == "command")

    def events(self) -> list[str]:
        return sorted(e["name"] for e in self.entries if e.get("meta-type") == "event")

    def arg_type(self, command: str) -> dict[str, Any] | None:
        cmd = self.by_name.get(command)
        return self.by_name.get(cmd["arg-type"]) if cmd else None

    def ret_element(self, command: str) -> dict[str, Any] | None:
        cmd = self.by_name.get(command)
        if not cmd:
            return None
        ret = self.by_name.get(cmd["ret-type"])
        if ret and ret.get("meta-type") == "array":
            ret = self.by_name.get(ret["element-type"])
        return ret

    def variant(self, obj: dict[str, Any] | None, case: str) -> dict[str, Any] | None:
        for v in (obj or {}).get("variants", []):
            if v["case"] == case:
                return self.by_name.get(v["type"])
        return None


def qmp_facts(schema_entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Commands, events, features and members the suites care about."""
    schema = Schema(schema_entries)
    features: dict[str, list[str]] = {}
    blockdev = schema.arg_type("blockdev-add")
    features["BlockdevOptions"] = list((blockdev or {}).get("features", []))
    for case in ("file", "nbd", "raw", "qcow2", "http", "iscsi", "ssh"):
        v = schema.variant(blockdev, case)
        if v is not None:
            features[f"BlockdevOptions.{case}"] = list(v.get("features", []))
    members = {}
    info = schema.ret_element("query-named-block-nodes")
    if info is not None:
        members["query-named-block-nodes"] = [m["name"] for m in info.get("members", [])]
    export = schema.arg_type("block-export-add")
    if export is not None:
        members["block-export-add"] = [m["name"] for m in export.get("members", [])]
    return {
        "commands": schema.commands(),
        "events": schema.events(),
        "features": features,
        "members": members,
    }
