"""The shards' ``--junitxml`` files as one, shaped like a single run's: one
``<testsuite>`` whose counts are the sums, whose time is the slowest shard's
(they ran side by side), with the suite properties (``qb.build.NAME``) once.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from .results import ResultsError

_COUNTS = ("tests", "errors", "failures", "skipped")


def _suite(path: str) -> tuple[dict[str, str], ET.Element]:
    """The root's attributes and the one ``<testsuite>`` of a pytest JUnit file."""
    try:
        root = ET.parse(path).getroot()
    except OSError as e:
        raise ResultsError(f"cannot read {path}: {e.strerror}") from None
    except ET.ParseError as e:
        raise ResultsError(f"{path} is not XML: {e}") from None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if root.tag not in ("testsuite", "testsuites") or len(suites) != 1:
        raise ResultsError(f"{path} is not a pytest --junitxml file (one <testsuite>)")
    return (dict(root.attrib) if root.tag == "testsuites" else {"name": "pytest tests"}), suites[0]


def merge_junit(paths: Sequence[str]) -> bytes:
    """One JUnit document of the shards' files; :class:`ResultsError` if a test case is in two
    of them or they disagree on a suite property."""
    parsed = [_suite(p) for p in paths]
    suites = [s for _, s in parsed]
    merged = ET.Element("testsuite", dict(suites[0].attrib))
    for attr in _COUNTS:
        merged.set(attr, str(sum(int(s.get(attr) or 0) for s in suites)))
    merged.set("time", f"{max(float(s.get('time') or 0.0) for s in suites):.3f}")
    stamps = [s.get("timestamp") for s in suites if s.get("timestamp")]
    if stamps:
        merged.set("timestamp", min(str(t) for t in stamps))
    hosts = list(dict.fromkeys(str(s.get("hostname")) for s in suites if s.get("hostname")))
    if hosts:
        merged.set("hostname", ",".join(hosts))
    props: dict[str, tuple[str, str]] = {}
    cases: dict[tuple[str, str], str] = {}
    body: list[ET.Element] = []
    for path, suite in zip(paths, suites, strict=True):
        for prop in suite.findall("properties/property"):
            name, value = str(prop.get("name")), str(prop.get("value"))
            if name in props and props[name][0] != value:
                raise ResultsError(f"suite property {name} is {props[name][0]!r} in "
                                   f"{props[name][1]} but {value!r} in {path}")
            props.setdefault(name, (value, path))
        for child in suite:
            if child.tag == "properties":
                continue
            if child.tag == "testcase":
                key = (str(child.get("classname")), str(child.get("name")))
                if key in cases:
                    raise ResultsError(f"{'::'.join(key)} is in {cases[key]} and in {path}: "
                                       f"the same case ran in two shards")
                cases[key] = path
            body.append(child)
    if props:
        el = ET.SubElement(merged, "properties")
        for name, (value, _) in props.items():
            ET.SubElement(el, "property", {"name": name, "value": value})
    merged.extend(body)
    root = ET.Element("testsuites", parsed[0][0])
    root.append(merged)
    # the declaration as pytest writes it
    return b'<?xml version="1.0" encoding="utf-8"?>' + ET.tostring(root, encoding="unicode").encode()
