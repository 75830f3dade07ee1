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
``error_restore_flags`` gives the base back its read-only flag; block-stream
into a read-only top (block/stream.c ``stream_start``) likewise reopens top
first and gives it back in its ``fail:`` path. The read-only
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
#: block-stream into a read-only top-fmt (the chain opened with top read-only=on): block/stream.c
#: stream_start reopens top first, then inserts the copy-on-read filter (bdrv_insert_node, which
#: prefixes "Could not create node: ") and creates the job (speed); its fail: path reopens top
#: read-only again (since e7d22f8bc6)
STREAM = {"job-id": "s", "device": "top-fmt"}
#: variant -> (block-commit / block-stream arguments, is the refusal after the layer's reopen)
VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "filter-invalid": ({**COMMIT, "filter-node-name": "bad name"}, True),
    "filter-duplicate": ({**COMMIT, "filter-node-name": "mid-file"}, True),
    "speed-negative": ({**COMMIT, "speed": -1}, False),
    "active-filter-invalid": ({**ACTIVE, "filter-node-name": "bad name"}, True),
    "active-filter-duplicate": ({**ACTIVE, "filter-node-name": "mid-file"}, True),
    "active-speed-negative": ({**ACTIVE, "speed": -1}, True),
    "stream-filter-invalid": ({**STREAM, "filter-node-name": "bad name"}, True),
    "stream-filter-duplicate": ({**STREAM, "filter-node-name": "mid-file"}, True),
    "stream-speed-negative": ({**STREAM, "speed": -1}, True),
}
_RESTORE = {
    "commit": ("block/commit.c commit_start's fail: path reopens the base read-only again "
            "(bdrv_reopen_set_read_only(base, true), 065abf9f2b) and job_early_fail drops the job"),
    "stream": ("block/stream.c stream_start's fail: path reopens top read-only again "
               "(bdrv_reopen_set_read_only(bs, true), e7d22f8bc6) after job_early_fail"),
    "active": ("block/mirror.c commit_active_start's error_restore_flags reopens the base read-only "
           "again (bdrv_reopen_set_read_only(base, true); the restore dates from 4da8358596)"),
}


def arguments(variant: str) -> dict[str, Any]:
    return dict(VARIANTS[variant][0])


def command(variant: str) -> str:
    return "block-stream" if variant.startswith("stream-") else "block-commit"


def _rules(variant: str, chain: Chain, caps: Capabilities) -> Rules:
    """expectations/jobs.py's rules of the job's layout: block-stream opens top read-only."""
    return Rules("stream" if variant.startswith("stream-") else "commit", chain, caps)


def top_read_only(variant: str, chain: Chain, caps: Capabilities) -> bool:
    return _rules(variant, chain, caps).layout().top_ro


def _error(variant: str) -> tuple[str, str]:
    prefix = "Could not create node: " if variant.startswith("stream-") else ""
    how = " (block.c bdrv_insert_node prefixes 'Could not create node: ')" if prefix else ""
    variant = variant.removeprefix("active-").removeprefix("stream-")
    if variant == "filter-invalid":
        return (f"{prefix}Invalid node-name: 'bad name'",
                f"block.c bdrv_assign_node_name: id_wellformed() refuses a name with a space{how}")
    if variant == "filter-duplicate":
        return (f"{prefix}Duplicate nodes with node-name='mid-file'",
                f"block.c bdrv_assign_node_name: bdrv_find_node() finds the name in use{how}")
    return ("Parameter 'speed' expects a non-negative value",
            "blockjob.c block_job_create -> block_job_set_speed_locked refuses a negative speed")


def opened(variant: str, chain: Chain, caps: Capabilities) -> Expect:
    """The chain as opened (expectations/jobs.py Rules: the commit's or the stream's layout)."""
    return _rules(variant, chain, caps).layout().opened


def refused(variant: str, chain: Chain, caps: Capabilities) -> Expect:
    """``block-commit`` (of mid, or active of top, into base) with *variant*'s bad argument:
    refused, the chain as opened."""
    rules = _rules(variant, chain, caps)
    text, source = _error(variant)
    after_reopen = VARIANTS[variant][1]
    kind = variant.split("-", maxsplit=1)[0] if variant.startswith(("active-", "stream-")) else "commit"
    where = {"active": "block/mirror.c commit_active_start", "stream": "block/stream.c stream_start",
             "commit": "block/commit.c commit_start"}[kind]
    layer = "top" if kind == "stream" else "base"
    if after_reopen and chain.readonly:
        return rules.refused(
            could_not_open(chain.path(layer), chain.storage.error_text),
            f"{where} reopens the read-only {layer} read-write before it creates the filter node "
            f"(and, for the active commit and the stream, the job), and file-{chain.storage.kind} "
            f"refuses {layer}-file's O_RDWR open; the bad argument is never looked at")
    if after_reopen:
        why = (f"{source}, in {where} after the {layer} was reopened read-write; {_RESTORE[kind]}, "
               f"so {layer}-fmt is ro=true with an O_RDONLY fd again")
    else:
        why = f"{source}, in {where} before the base is reopened"
    exp = rules.refused(re.escape(text), why)
    return exp.replace(because=why)
