"""Expectations of a ``block-commit`` that fails early (suites/test_jobs_early_fail.py).

block/commit.c ``commit_start`` creates the job (``block_job_create``: a
negative ``speed`` fails here, before anything is reopened), then reopens a
read-only base read-write (``s->base_read_only``), then creates the filter
node (``bdrv_new_open_driver(&bdrv_commit_top, filter_node_name)``: block.c
``bdrv_assign_node_name`` refuses an invalid or a duplicate name). Every
failure after the reopen goes to ``fail:``, which reopens the base read-only
again (``bdrv_reopen_set_read_only(base, true, NULL)``) and drops the job
(``job_early_fail``): base-fmt ro=true, base-file's fd O_RDONLY again
(dynamic auto-read-only), no job left. On storage that refuses writes the
reopen itself fails first, with the storage's error, for the filter-name
variants; ``speed`` is refused before the reopen everywhere. The read-only
base on early failure is 065abf9f2b ("commit: Make base read-only if there is
an early failure", 4.1); filter-node-name is 0db832f42e (2.9). Checked
against 7.2.22 and 10.0.2.
"""
from __future__ import annotations

import re
from typing import Any

from ..qemu.capabilities import Capabilities
from ..scenario.outcome import Expect
from ..scenario.steps import Chain
from .jobs import Rules, could_not_open

#: variant -> (extra block-commit arguments, where commit_start refuses them)
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "filter-invalid": ({"filter-node-name": "bad name"}, "after"),
    "filter-duplicate": ({"filter-node-name": "mid-file"}, "after"),
    "speed-negative": ({"speed": -1}, "before"),
}
COMMIT = {"job-id": "j", "device": "top-fmt", "top-node": "mid-fmt", "base-node": "base-fmt"}


def arguments(variant: str) -> dict[str, Any]:
    return {**COMMIT, **VARIANTS[variant][0]}


def _error(variant: str) -> tuple[str, str]:
    if variant == "filter-invalid":
        return ("Invalid node-name: 'bad name'",
                "block.c bdrv_assign_node_name: id_wellformed() refuses a name with a space")
    if variant == "filter-duplicate":
        return ("Duplicate nodes with node-name='mid-file'",
                "block.c bdrv_assign_node_name: bdrv_find_node() finds the name in use")
    return ("Parameter 'speed' expects a non-negative value",
            "blockjob.c block_job_create -> block_job_set_speed_locked refuses a negative speed")


def opened(chain: Chain, caps: Capabilities) -> Expect:
    """The chain as opened (expectations/jobs.py Rules, the intermediate commit's layout)."""
    return Rules("commit", chain, caps).layout().opened


def refused(variant: str, chain: Chain, caps: Capabilities) -> Expect:
    """``block-commit`` of mid into base with *variant*'s bad argument: refused, the chain as opened."""
    rules = Rules("commit", chain, caps)
    text, source = _error(variant)
    when = VARIANTS[variant][1]
    if when == "after" and chain.readonly:
        return rules.refused(
            could_not_open(chain.path("base"), chain.storage.error_text),
            f"block/commit.c commit_start reopens the read-only base read-write before it creates the "
            f"filter node, and file-{chain.storage.kind} refuses base-file's O_RDWR open; the bad "
            f"filter-node-name is never looked at")
    if when == "after":
        why = (f"{source}, in block/commit.c commit_start after the base was reopened read-write; "
               "its fail: path reopens the base read-only again (bdrv_reopen_set_read_only(base, true), "
               "065abf9f2b) and job_early_fail drops the job, so base-fmt is ro=true, O_RDONLY fd again")
    else:
        why = f"{source}, in block/commit.c commit_start before the base is reopened"
    exp = rules.refused(re.escape(text), why)
    return exp.replace(because=why)
