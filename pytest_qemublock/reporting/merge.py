"""``qemublock-merge OUT SHARD...``: the results files of the N shards of one run
(``--qb-shard K/N``) as one results file, in the format of a single run's.

It refuses, with one line, shards that do not make one run: a shard missing or
given twice, shards cut from different collections (the ``partition`` digest),
different builds, or a case in two files. Case records are copied whole, fields
this version does not know included.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .fold import OUTCOMES
from .junit import merge_junit
from .results import RESULTS_FORMAT, RESULTS_VERSION, ResultsError, load_results, write_results

#: what the merge computes itself; any other top-level field is kept if every shard agrees
_COMPUTED = {"format", "version", "created", "duration", "exitstatus", "args", "workers",
             "build_order", "builds", "totals", "matrix", "procs", "collect_errors", "shard",
             "tests"}


class MergeError(ResultsError):
    """The files given are not the shards of one run."""


def merge_documents(shards: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """One results document from (file name, document) of every shard of a run."""
    ordered = _check_shards(shards)
    docs = [d for _, d in ordered]
    first = docs[0]
    builds = _builds(ordered)
    tests: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for name, doc in ordered:
        for nodeid, test in (doc.get("tests") or {}).items():
            if nodeid in tests:
                raise MergeError(f"{nodeid} is in {owner[nodeid]} and in {name}: "
                                 f"the same case ran in two shards")
            tests[nodeid], owner[nodeid] = test, name
    totals = Counter(str(t.get("outcome")) for t in tests.values())
    cells: dict[tuple[str, str, str], Counter[str]] = {}
    for doc in docs:
        for m in doc.get("matrix") or []:
            cells.setdefault((m["build"], m["scenario"], m["backend"]), Counter()).update(m["counts"])
    procs: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    collect_errors: list[str] = []
    for doc in docs:
        procs.update((doc.get("procs") or {}).get("tests") or {})
        outside.update((doc.get("procs") or {}).get("outside_tests") or {})
        collect_errors += [e for e in doc.get("collect_errors") or [] if e not in collect_errors]
    merged: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "created": min(str(d.get("created") or "") for d in docs),
        # the shards ran side by side: the run took as long as its slowest shard
        "duration": max(float(d.get("duration") or 0.0) for d in docs),
        "exitstatus": max(int(d.get("exitstatus") or 0) for d in docs),
        "args": first.get("args") or [],
        "workers": sum(int(d.get("workers") or 0) for d in docs),
        "build_order": first.get("build_order") or [],
        "builds": builds,
        "totals": {o: totals[o] for o in OUTCOMES if totals[o]},
        "matrix": [{"build": b, "scenario": s, "backend": k,
                    "counts": {o: n[o] for o in OUTCOMES if n[o]}}
                   for (b, s, k), n in sorted(cells.items())],
        "procs": {"tests": dict(sorted(procs.items())),
                  "outside_tests": dict(sorted(outside.items())),
                  "counted": all((d.get("procs") or {}).get("counted", False) for d in docs)},
        "collect_errors": collect_errors,
    }
    for key in first:
        if key not in _COMPUTED and key not in merged and all(d.get(key) == first[key] for d in docs):
            merged[key] = first[key]
    merged["shards"] = [{**d["shard"], "file": name, "created": d.get("created"),
                         "duration": d.get("duration"), "exitstatus": d.get("exitstatus"),
                         "workers": d.get("workers"), "args": d.get("args"),
                         "tests": len(d.get("tests") or {})} for name, d in ordered]
    merged["tests"] = tests
    return merged


def _check_shards(shards: Sequence[tuple[str, Mapping[str, Any]]]) -> list[tuple[str, Mapping[str, Any]]]:
    """*shards* in shard order, or :class:`MergeError` if they are not all N shards of one cut."""
    if not shards:
        raise MergeError("no results files given")
    for name, doc in shards:
        info = doc.get("shard")
        if not isinstance(info, Mapping) or not {"index", "total", "partition"} <= set(info):
            raise MergeError(f"{name} is not the results of one shard (pytest --qb-shard K/N "
                             f"--qb-results FILE)")
    first_name, first = shards[0]
    total, digest = first["shard"]["total"], first["shard"]["partition"]
    by_index: dict[int, str] = {}
    for name, doc in shards:
        info = doc["shard"]
        if info["total"] != total:
            raise MergeError(f"{first_name} is a shard of {total}, {name} of {info['total']}")
        if info["partition"] != digest:
            raise MergeError(f"{first_name} and {name} cut different collections (partition "
                             f"{digest} vs {info['partition']}): same tests, options, "
                             f"durations file and plugin version on every runner?")
        if info["index"] in by_index:
            raise MergeError(f"{by_index[info['index']]} and {name} are both shard "
                             f"{info['index']}/{total}")
        by_index[info["index"]] = name
    missing = [str(i) for i in range(1, total + 1) if i not in by_index]
    if missing:
        raise MergeError(f"shard {', '.join(f'{i}/{total}' for i in missing)} missing "
                         f"(given: {', '.join(by_index[i] for i in sorted(by_index))})")
    return sorted(shards, key=lambda s: int(s[1]["shard"]["index"]))


def _builds(shards: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The builds of all shards; they must have run the same builds, in the same order."""
    first_name, first = shards[0]
    order = first.get("build_order") or []
    builds: dict[str, Any] = {}
    seen_in: dict[str, str] = {}
    for name, doc in shards:
        if (doc.get("build_order") or []) != order:
            raise MergeError(f"{first_name} ran builds {', '.join(order) or '(default)'}, {name} "
                             f"{', '.join(doc.get('build_order') or []) or '(default)'}")
        for build, info in (doc.get("builds") or {}).items():
            if build not in builds:
                builds[build], seen_in[build] = info, name
            elif info.get("version_line") != builds[build].get("version_line"):
                raise MergeError(f"build {build} is {builds[build].get('version_line')!r} in "
                                 f"{seen_in[build]} but {info.get('version_line')!r} in {name}")
    return builds


def merge_main(argv: Sequence[str] | None = None) -> int:
    """``qemublock-merge``: merge the shards' results (and JUnit XML) files."""
    p = argparse.ArgumentParser(
        prog="qemublock-merge",
        description="Merge the results files of the shards of one run (pytest --qb-shard K/N "
                    "--qb-results FILE) into one results file, read by qemublock-summary and "
                    "qemublock-diff like a single run's. Exit status 2 if they are not all the "
                    "shards of one run.")
    p.add_argument("out", metavar="OUT", help="the merged results file to write")
    p.add_argument("shards", nargs="+", metavar="SHARD", help="each shard's results file")
    p.add_argument("--junitxml", nargs="+", metavar=("OUT.xml", "SHARD.xml"),
                   help="also merge the shards' --junitxml files into OUT.xml")
    args = p.parse_args(argv)
    if args.junitxml is not None and len(args.junitxml) < 2:
        p.error("--junitxml needs the output file and at least one shard's file")
    outputs = [(args.out, args.shards)] + ([(args.junitxml[0], args.junitxml[1:])] if args.junitxml else [])
    for out, inputs in outputs:
        if Path(out).resolve() in {Path(i).resolve() for i in inputs}:
            p.error(f"{out} is both the output and one of the shards' files")
    try:
        merged = merge_documents([(f, load_results(f)) for f in args.shards])
        junit = merge_junit(args.junitxml[1:]) if args.junitxml else None
        write_results(Path(args.out), merged)
        if junit is not None:
            Path(args.junitxml[0]).write_bytes(junit)
    except (ResultsError, OSError) as e:
        print(f"qemublock-merge: error: {e}", file=sys.stderr)
        return 2
    shards = merged["shards"]
    counts = ", ".join(f"{n} {o}" for o, n in merged["totals"].items()) or "no cases"
    print(f"qemublock-merge: {len(shards)} shards -> {args.out}: {len(merged['tests'])} cases ({counts})"
          + (f"; JUnit -> {args.junitxml[0]}" if junit is not None else ""))
    return 0
