"""The shard cut (``--qb-shard K/N``) and the durations that balance it, without running pytest."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import combinations

import pytest

from pytest_qemublock.reporting.durations import Durations, from_results, load_durations
from pytest_qemublock.reporting.results import ResultsError
from pytest_qemublock.scenario.shards import ShardSpec, ShardSpecError, cut, partition


@dataclass
class Item:
    """What the cut reads of a pytest item: its id and its qb.* properties."""

    nodeid: str
    user_properties: list[tuple[str, object]] = field(default_factory=list)


def _items() -> list[Item]:
    """Three modules x two builds x two backends, of different sizes."""
    out = []
    for module, n in (("suites/test_open.py", 6), ("suites/test_reopen.py", 3), ("suites/test_jobs.py", 1)):
        for build in ("b72", "b10"):
            for backend in ("file-rw", "nbd-qsd-unix-ro"):
                for i in range(n):
                    out.append(Item(f"{module}::t[{build}-{backend}-{i}]",
                                    [("qb.build", build), ("qb.backend", backend)]))
    return out


def _cut(items: list[Item], k: int, n: int, estimate=None):  # type: ignore[no-untyped-def]
    return cut(items, ShardSpec(k, n), estimate, "test")  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "spec"), [("1/1", (1, 1)), ("2/3", (2, 3)), (" 10/12 ", (10, 12))])
def test_spec_parses(text: str, spec: tuple[int, int]) -> None:
    parsed = ShardSpec.parse(text)
    assert (parsed.index, parsed.total) == spec


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "3", "a/b", "-1/3", "1/3/4", ""])
def test_spec_refuses(text: str) -> None:
    with pytest.raises(ShardSpecError, match=r"^--qb-shard "):
        ShardSpec.parse(text)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 12])
def test_shards_are_disjoint_cover_the_run_and_keep_groups_whole(n: int) -> None:
    items = _items()
    cuts = [_cut(items, k, n) for k in range(1, n + 1)]
    ids = [[it.nodeid for it in c.keep] for c in cuts]
    assert sorted(i for shard in ids for i in shard) == sorted(it.nodeid for it in items)
    for a, b in combinations(ids, 2):
        assert not set(a) & set(b)
    owner: dict[tuple[str, object, object], int] = {}
    for k, c in enumerate(cuts, 1):
        for it in c.keep:
            props = dict(it.user_properties)
            key = (it.nodeid.split("::")[0], props["qb.build"], props["qb.backend"])
            assert owner.setdefault(key, k) == k, f"group {key} split"
        # collection order is kept inside a shard
        assert [it.nodeid for it in c.keep] == [it.nodeid for it in items if it in c.keep]
    assert len({c.info["partition"] for c in cuts}) == 1


def test_the_cut_is_the_same_for_the_same_collection() -> None:
    a, b = _items(), list(reversed(_items()))
    for k in (1, 2, 3):
        assert {i.nodeid for i in _cut(a, k, 3).keep} == {i.nodeid for i in _cut(b, k, 3).keep}
    assert _cut(a, 1, 3).info["partition"] == _cut(b, 1, 3).info["partition"]


def test_balance_by_case_count_greedy() -> None:
    # 12 groups: 4 of 6 cases (open), 4 of 3 (reopen), 4 of 1 (jobs) = 40 cases:
    # the 6s on 1, 2, 3, 1 (12 6 6) | the 3s on 2, 3, 2, 3 (12 12 12) | the 1s on 1, 2, 3, 1
    counts = [c.info["selected"] for c in (_cut(_items(), k, 3) for k in (1, 2, 3))]
    assert counts == [14, 13, 13]
    assert [c.info["groups"] for c in (_cut(_items(), 1, 3),)] == [12]


def test_partition_heaviest_first_onto_the_lightest_shard_lowest_first_on_ties() -> None:
    weights = {("m", "", str(i)): w for i, w in enumerate([5.0, 4.0, 3.0, 3.0, 2.0, 2.0, 1.0])}
    shard_of = partition(weights, 3)
    loads = [sum(w for k, w in weights.items() if shard_of[k] == s) for s in (1, 2, 3)]
    assert loads == [7.0, 7.0, 6.0]
    assert shard_of[("m", "", "0")] == 1 and shard_of[("m", "", "1")] == 2


def test_measured_durations_balance_time_not_count() -> None:
    items = _items()
    slow = {it.nodeid: 10.0 for it in items if "test_jobs" in it.nodeid}

    def estimate(nodeid: str, build: str | None) -> float | None:
        return slow.get(nodeid, 0.1)

    cuts = [_cut(items, k, 4, estimate) for k in (1, 2, 3, 4)]
    # the four 10 s jobs groups get a shard each; the other 36 cases go with them
    for c in cuts:
        assert sum(1 for it in c.keep if "test_jobs" in it.nodeid) == 1
    assert max(c.info["estimated"] for c in cuts) - min(c.info["estimated"] for c in cuts) < 0.7


def test_unknown_cases_count_as_the_median() -> None:
    items = [Item(f"m{i}.py::t") for i in range(4)]
    known = {"m0.py::t": 1.0, "m1.py::t": 3.0, "m2.py::t": 5.0}
    c = _cut(items, 1, 1, lambda nodeid, build: known.get(nodeid))
    assert c.info["estimated"] == 1.0 + 3.0 + 5.0 + 3.0  # the median of [1, 3, 5] for m3


def test_more_shards_than_groups_leaves_shards_empty_never_fewer() -> None:
    items = _items()  # 12 groups
    assert all(_cut(items, k, 12).keep for k in range(1, 13))
    selected = [len(_cut(items, k, 14).keep) for k in range(1, 15)]
    assert selected.count(0) == 2 and sum(selected) == len(items)


def _results(tests: dict[str, tuple[float, str]], builds: list[str]) -> dict[str, object]:
    return {"format": "qemublock-results", "version": 1, "build_order": builds,
            "tests": {n: {"outcome": "passed", "duration": d, "build": b} for n, (d, b) in tests.items()}}


def test_durations_by_id_then_by_case_without_the_build() -> None:
    d = from_results([_results({"s.py::t[b72-file-rw]": (1.0, "b72"), "s.py::t[b10-file-rw]": (3.0, "b10"),
                                "s.py::u[b72]": (0.5, "b72")}, ["b72", "b10"])])
    assert d.estimate("s.py::t[b72-file-rw]", "b72") == 1.0
    # another run's build names: the case's mean over the builds measured
    assert d.estimate("s.py::t[v7.2-file-rw]", "v7.2") == 2.0
    assert d.estimate("s.py::u[x]", "x") == 0.5
    assert d.estimate("s.py::t[file-rw]", None) == 2.0  # a single-build run has no build in ids
    assert d.estimate("s.py::new[b72]", "b72") is None


def test_durations_file_round_trip_and_refusals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = Durations({"a.py::t": 1.5}, {"a.py::t": 1.5})
    (tmp_path / "d.json").write_text(json.dumps(d.to_json()))
    assert load_durations(str(tmp_path / "d.json")) == d
    (tmp_path / "r.json").write_text(json.dumps(_results({"a.py::t": (1.5, "b")}, ["b"])))
    assert load_durations(str(tmp_path / "r.json")).estimate("a.py::t", None) == 1.5
    for name, text, error in (
            ("x.json", '{"format": "other"}', "neither a durations file"),
            ("v.json", '{"format": "qemublock-durations", "version": 99}', "version 99"),
            ("n.json", '{"format": "qemublock-durations", "tests": {"a": "slow"}}', "must be numbers"),
            ("j.json", "{", "is not JSON")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ResultsError, match=error):
            load_durations(str(tmp_path / name))


def test_durations_command_writes_what_the_option_reads(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from pytest_qemublock.reporting.durations import durations_main

    (tmp_path / "r.json").write_text(json.dumps(_results({"s.py::t[b72-x]": (1.25, "b72"),
                                                          "s.py::t[b10-x]": (0.75, "b10")},
                                                         ["b72", "b10"])))
    assert durations_main([str(tmp_path / "r.json")]) == 0
    (tmp_path / "d.json").write_text(capsys.readouterr().out)
    d = load_durations(str(tmp_path / "d.json"))
    assert d.by_id == {"s.py::t[b72-x]": 1.25, "s.py::t[b10-x]": 0.75}
    assert d.by_case == {"s.py::t[x]": 1.0}
    assert durations_main([str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err == (f"qemublock-durations: error: cannot read "
                                       f"{tmp_path / 'missing.json'}: No such file or directory\n")
