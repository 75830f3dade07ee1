"""``--qb-shard K/N``: the part of a run one CI runner takes (docs/report.md, "Sharding").

Every runner collects the same items and cuts them the same way, so the N shards
are disjoint and together hold the whole run. The unit that is never cut is a
*sharing group*: the cases of one test module, on one build, on one backend.
That is what shares servers and QEMU processes inside a pytest process: the
module's target pool (``backends/pool.py``) keys its shared targets and their
hot-plug QEMU by build, backend and recipe, and the recipe is picked inside the
test from the format, so module × build × backend is the finest cut known at
collection that never splits a pool entry.

Groups go heaviest first onto the shard with the least estimated time so far
(longest-processing-time greedy), ties to the lowest shard. With every estimate
above zero, no shard stays empty while there are at least N groups.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

#: (module path, build, backend): what must stay on one runner
GroupKey = tuple[str, str, str]
#: seconds a case is expected to take, from its id and build; None when unknown
Estimate = Callable[[str, str | None], float | None]

#: no group weighs nothing, so an empty shard always takes the next group
_FLOOR = 0.001
_SPEC = re.compile(r"(\d+)/(\d+)")


class ShardSpecError(ValueError):
    """``--qb-shard`` is not ``K/N`` with 1 <= K <= N."""


@dataclass(frozen=True)
class ShardSpec:
    """This runner's shard: *index* (1-based) of *total*."""

    index: int
    total: int

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        """``"2/3"`` -> ShardSpec(2, 3); raises :class:`ShardSpecError` with the reason."""
        m = _SPEC.fullmatch(text.strip())
        if m is None:
            raise ShardSpecError(f"--qb-shard {text}: expected K/N, e.g. 2/3 (shard 2 of 3)")
        index, total = int(m[1]), int(m[2])
        if total < 1 or not 1 <= index <= total:
            raise ShardSpecError(f"--qb-shard {text}: K must be between 1 and N (N >= 1)")
        return cls(index, total)

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


def group_key(item: pytest.Item) -> GroupKey:
    """The sharing group of *item*, from its node id and its ``qb.*`` properties."""
    props = dict(item.user_properties)
    module = item.nodeid.split("::", 1)[0]
    return (module, str(props.get("qb.build") or ""), str(props.get("qb.backend") or ""))


def partition(weights: Mapping[GroupKey, float], total: int) -> dict[GroupKey, int]:
    """Each group's shard (1-based): heaviest first onto the lightest shard so far."""
    loads = [0.0] * total
    out: dict[GroupKey, int] = {}
    for key in sorted(weights, key=lambda k: (-weights[k], k)):
        shard = min(range(total), key=lambda s: (loads[s], s))
        loads[shard] += weights[key]
        out[key] = shard + 1
    return out


@dataclass
class Cut:
    """One shard's items and what the results file says about the cut."""

    keep: list[pytest.Item]
    drop: list[pytest.Item]
    info: dict[str, Any]


def cut(items: Sequence[pytest.Item], spec: ShardSpec, estimate: Estimate | None,
        balanced_by: str) -> Cut:
    """Shard *spec* of *items*, in their collection order.

    *estimate* gives a case's expected seconds (None: unknown, counts as the
    median of the known ones; without *estimate* every case counts 1).
    """
    keys = [group_key(it) for it in items]
    costs = _costs(items, estimate)
    weights: dict[GroupKey, float] = {}
    for key, cost in zip(keys, costs, strict=True):
        weights[key] = weights.get(key, 0.0) + cost
    shard_of = partition(weights, spec.total)
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item, key in zip(items, keys, strict=True):
        (keep if shard_of[key] == spec.index else drop).append(item)
    # The same digest on every runner proves they cut the same collection the same way.
    digest = hashlib.sha256("\n".join(sorted(f"{shard_of[k]}\t{it.nodeid}" for it, k in zip(
        items, keys, strict=True))).encode()).hexdigest()[:16]
    info = {
        "index": spec.index, "total": spec.total,
        "groups": len(weights), "cases": len(items), "selected": len(keep),
        "estimated": round(sum(w for k, w in weights.items() if shard_of[k] == spec.index), 3),
        "balanced_by": balanced_by, "partition": digest,
    }
    return Cut(keep, drop, info)


def _costs(items: Sequence[pytest.Item], estimate: Estimate | None) -> list[float]:
    if estimate is None:
        return [1.0] * len(items)
    known: list[float | None] = []
    for item in items:
        build = dict(item.user_properties).get("qb.build")
        known.append(estimate(item.nodeid, str(build) if build else None))
    measured = sorted(c for c in known if c is not None)
    fallback = measured[len(measured) // 2] if measured else 1.0
    return [max(_FLOOR, fallback if c is None else c) for c in known]


def empty_by_design(info: Mapping[str, Any]) -> bool:
    """A shard left without cases only because there are more shards than sharing groups
    (no error: the other shards hold the whole run)."""
    return not info["selected"] and bool(info["cases"])
