"""Measured case durations for balancing shards (``--qb-shard-durations FILE``).

FILE is a results file of an earlier run (``--qb-results``, a merged one too) or
the smaller durations file ``qemublock-durations`` makes from results files, which
a project can commit. A case is looked up by its test id, else by its id without
the build's part (so a run of builds named differently still finds it).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .fold import strip_build
from .results import RESULTS_FORMAT, ResultsError, entry_build, load_json, load_results

DURATIONS_FORMAT = "qemublock-durations"
DURATIONS_VERSION = 1


@dataclass
class Durations:
    """Seconds per test id and per case id (the id without the build)."""

    by_id: dict[str, float] = field(default_factory=dict)
    by_case: dict[str, float] = field(default_factory=dict)

    def estimate(self, nodeid: str, build: str | None) -> float | None:
        """The measured seconds of *nodeid* (of *build*), or None if never measured."""
        if nodeid in self.by_id:
            return self.by_id[nodeid]
        case = strip_build(nodeid, [build]) if build else nodeid
        return self.by_case.get(case)

    def to_json(self) -> dict[str, Any]:
        return {"format": DURATIONS_FORMAT, "version": DURATIONS_VERSION,
                "tests": dict(sorted(self.by_id.items())), "cases": dict(sorted(self.by_case.items()))}


def from_results(documents: Sequence[Mapping[str, Any]]) -> Durations:
    """The durations of every case of the results *documents* (later ones win); a case
    measured on several builds gets their mean."""
    by_id: dict[str, float] = {}
    per_case: dict[str, dict[str, float]] = {}
    for data in documents:
        for nodeid, test in (data.get("tests") or {}).items():
            seconds = round(float(test.get("duration") or 0.0), 3)
            by_id[nodeid] = seconds
            case = str(test.get("case") or strip_build(nodeid, [entry_build(test, data)]))
            per_case.setdefault(case, {})[nodeid] = seconds
    by_case = {c: round(sum(v.values()) / len(v), 3) for c, v in per_case.items()}
    return Durations(by_id, by_case)


def load_durations(path: str) -> Durations:
    """A durations file or a results file; raises :class:`ResultsError` for anything else."""
    data = load_json(path)
    if isinstance(data, dict) and data.get("format") == RESULTS_FORMAT:
        return from_results([load_results(path)])
    if not isinstance(data, dict) or data.get("format") != DURATIONS_FORMAT:
        raise ResultsError(f"{path} is neither a durations file (qemublock-durations) "
                           f"nor a results file (--qb-results)")
    if data.get("version", 0) > DURATIONS_VERSION:
        raise ResultsError(f"{path} has durations format version {data['version']}; "
                           f"this version reads up to {DURATIONS_VERSION}")
    try:
        return Durations({str(k): float(v) for k, v in (data.get("tests") or {}).items()},
                         {str(k): float(v) for k, v in (data.get("cases") or {}).items()})
    except (TypeError, ValueError, AttributeError):
        raise ResultsError(f"{path}: durations must be numbers of seconds") from None


def durations_main(argv: Sequence[str] | None = None) -> int:
    """``qemublock-durations RESULTS... > FILE``: the durations to balance shards by."""
    p = argparse.ArgumentParser(
        prog="qemublock-durations",
        description="Print the measured case durations of results files (pytest --qb-results) "
                    "as a durations file for pytest --qb-shard-durations.")
    p.add_argument("files", nargs="+", metavar="RESULTS", help="results files; later ones win")
    args = p.parse_args(argv)
    try:
        durations = from_results([load_results(f) for f in args.files])
    except ResultsError as e:
        print(f"qemublock-durations: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(durations.to_json(), indent=0))
    return 0
