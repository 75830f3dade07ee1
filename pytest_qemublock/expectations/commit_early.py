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
variants; ``speed`` is refused before the reopen everywhere. The active
commit (block/mirror.c ``commit_active_start``) reopens the base before it
does anything else, so all its refusals come after the reopen, and its
``error_restore_flags`` gives the base back its read-only flag. The read-only
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

COMMIT = {"job-id": "j", "device": "top-fmt", "top-node": "mid-fmt", "base-node": "base-fmt"}
#: the active commit (top-fmt into base-fmt): block/mirror.c commit_active_start reopens the
#: base first, then mirror_start_job creates the filter node and then the job (speed), so every
#: refusal comes after the reopen; error_restore_flags reopens the base read-only again
ACTIVE = {"job-id": "a", "device": "top-fmt", "base-node": "base-fmt"}
#: variant -> (block-commit arguments, is the refusal after the base's reopen)
VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "filter-invalid": ({**COMMIT, "filter-node-name": "bad name"}, True),
    "filter-duplicate": ({**COMMIT, "filter-node-name": "mid-file"}, True),
    "speed-negative": ({**COMMIT, "speed": -1}, False),
    "active-filter-invalid": ({**ACTIVE, "filter-node-name": "bad name"}, True),
    "active-filter-duplicate": ({**ACTIVE, "filter-node-name": "mid-file"}, True),
    "active-speed-negative": ({**ACTIVE, "speed": -1}, True),
}
_RESTORE = {
    False: ("block/commit.c commit_start's fail: path reopens the base read-only again "
            "(bdrv_reopen_set_read_only(base, true), 065abf9f2b) and job_early_fail drops the job"),
    True: ("block/mirror.c commit_active_start's error_restore_flags reopens the base read-only "
           "again (bdrv_reopen_set_read_only(base, true); the restore dates from 4da8358596)"),
}


def arguments(variant: str) -> dict[str, Any]:
    return dict(VARIANTS[variant][0])


def _error(variant: str) -> tuple[str, str]:
    variant = variant.removeprefix("active-")
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
    """``block-commit`` (of mid, or active of top, into base) with *variant*'s bad argument:
    refused, the chain as opened."""
    rules = Rules("commit", chain, caps)
    text, source = _error(variant)
    after_reopen = VARIANTS[variant][1]
    active = variant.startswith("active-")
    where = "block/mirror.c commit_active_start" if active else "block/commit.c commit_start"
    if after_reopen and chain.readonly:
        return rules.refused(
            could_not_open(chain.path("base"), chain.storage.error_text),
            f"{where} reopens the read-only base read-write before it creates the filter node "
            f"(and, for the active commit, the job), and file-{chain.storage.kind} refuses base-file's "
            f"O_RDWR open; the bad argument is never looked at")
    if after_reopen:
        why = (f"{source}, in {where} after the base was reopened read-write; {_RESTORE[active]}, "
               "so base-fmt is ro=true with an O_RDONLY fd again")
    else:
        why = f"{source}, in {where} before the base is reopened"
    exp = rules.refused(re.escape(text), why)
    return exp.replace(because=why)
