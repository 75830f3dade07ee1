"""Expectations of the jobs scenario (suites/test_jobs.py).

Block jobs on the chain of :mod:`pytest_qemublock.chains` (every file node
``auto-read-only=on``; base-fmt and mid-fmt ``read-only=on``) must reopen a
read-only layer read-write for their writes, and give it back:

* intermediate ``block-commit`` (block/commit.c): ``commit_start`` reopens the
  base read-write if it was read-only (``s->base_read_only``), and
  ``commit_clean`` reopens it read-only again, after completion *and* after
  a cancel (iotest 247: file nodes auto-read-only=on, formats read-only=on);
* ``block-stream`` (block/stream.c): ``stream_start`` reopens the top
  read-write (``bs_read_only``), ``stream_clean`` read-only again;
* active ``block-commit`` (block/mirror.c): ``commit_active_start`` reopens
  the base read-write; on ``block-job-complete`` ``mirror_exit_common`` gives
  the base the active layer's read-only flag (``ro != bdrv_is_read_only
  (target_bs)``), since the base *replaces* the top: it stays read-write.

A read-write qcow2 takes WRITE on its file child (block.c
``bdrv_default_perms_for_storage``), so an ``auto-read-only=on`` file under
it switches to O_RDWR and back (dynamic auto-read-only, see
expectations/dynamic_aro.py). On storage that refuses writes the reopen fails
with ``Could not open '<path>': <strerror>`` (util/osdep.c), the job is never
created and nothing changes; a base *file* node with ``read-only=on`` refuses
the reopen as ``Block node is read-only`` (block.c bdrv_node_refresh_perm),
without trying any open. Checked against 7.2.22 and 10.0.2.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..qemu.capabilities import Capabilities
from ..scenario.known_bugs import ACTIVE_COMMIT_ABORT, ACTIVE_COMMIT_SOFT_CANCEL, KnownBug
from ..scenario.outcome import Expect
from ..scenario.steps import LAYERS, Chain
from ..storage.images import Pattern
from .common import NODE_IS_READ_ONLY, O_RDONLY, O_RDWR, dynamic
from .locks import (
    ALL,
    CONSISTENT_READ,
    NONE,
    QEMU_IMG_INFO,
    QEMU_IMG_INFO_U,
    WRITE,
    WRITE_UNCHANGED,
    Perms,
    file_child,
    lock_ranges,
    second_open,
)

#: what a job puts above a layer while it runs, as a parent of the layer's format node:
#: block/commit.c commit_start and block/mirror.c commit_active_start block every node between
#: top and base ("intermediate node", block_job_add_bdrv) sharing only write and write-unchanged:
#: consistent read is not shared, the node's data is about to go (file-posix lock byte 200);
JOB_INTERMEDIATE = Perms(0, WRITE | WRITE_UNCHANGED)
#: block/stream.c stream_start puts a copy-on-read filter above the top, which writes the data it
#: copies up as write-unchanged (lock byte 102)
STREAM_COR = Perms(CONSISTENT_READ | WRITE_UNCHANGED, ALL)


#: variants that run on every storage; the others only on writable storage
ALL_STORAGES = ("commit", "stream", "active-commit-complete", "base-file-ro")
RW_ONLY = ("commit-cancel", "active-commit-cancel", "active-commit-cancel-early", "base-file-aro-off")
VARIANTS = ALL_STORAGES + RW_ONLY


def could_not_open(path: object, strerror: str | None) -> str:
    """util/osdep.c qemu_open_internal(): the error of a refused open (a regex)."""
    return re.escape(f"Could not open '{path}': {strerror or ''}")


@dataclass(frozen=True)
class Layout:
    """How the chain is opened for a variant."""

    top_ro: bool
    base_file: Mapping[str, Any]  # extra options of base-file
    opened: Expect  # the state right after start-up


@dataclass(frozen=True)
class JobPlan:
    """One job command and what it must do."""

    command: str
    arguments: Mapping[str, Any]
    start: Expect  # right after the command returned: the state *during* the job, or its error
    statuses: tuple[str, ...] = ()  # allowed query-block-jobs statuses of the job meanwhile
    finish: tuple[str, ...] = ()  # "set-speed-0" | "ready" | "complete" | "cancel", in order
    event: str = ""  # the event that ends the job
    end: Expect | None = None  # the state after that event

    @property
    def job(self) -> str:
        return str(self.arguments["job-id"])

    def describe(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.arguments.items() if k != "job-id")
        return f"{self.command} {args}"


@dataclass(frozen=True)
class DataCheck:
    """After QEMU quit: a pattern readable through *layer*'s on-disk chain, or its backing file."""

    layer: str
    because: str
    pattern: Pattern | None = None
    backing: str | None = field(default=None)  # expected backing layer, "" for none


def missing(variant: str, caps: Capabilities) -> str | None:
    """Why this build cannot run *variant* (a skip reason), or None."""
    if not dynamic(caps):
        return ("file-posix lacks the QAPI feature dynamic-auto-read-only (QEMU < 4.0): the file "
                "nodes' fds would not follow the jobs' reopens, nothing to test here")
    need = {"block-commit", "query-block-jobs"}
    if variant == "stream":
        need = {"block-stream", "query-block-jobs", "block-job-set-speed"}
    elif variant in ("commit", "base-file-aro-off"):
        need.add("block-job-set-speed")
    elif variant.endswith("-cancel") or variant.endswith("-cancel-early"):
        need.add("block-job-cancel")
    elif variant == "active-commit-complete":
        need.add("block-job-complete")
    lacking = sorted(c for c in need if not caps.has_command(c))
    return f"the build has no QMP command {', '.join(lacking)}" if lacking else None


class Rules:
    """Expectations for one variant on one chain (its storage decides what is refused)."""

    def __init__(self, variant: str, chain: Chain, caps: Capabilities) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown jobs variant {variant!r}")
        if not dynamic(caps):
            raise ValueError("the jobs rules only describe builds with dynamic-auto-read-only")
        self.variant = variant
        self.chain = chain
        self.refuses = chain.readonly
        # The active layer is read-write, as a running guest has it; on storage that refuses
        # writes it can only be opened read-only (a read-write qcow2 needs WRITE on its file at
        # open, block.c bdrv_default_perms_for_storage). block-stream writes into the top: it starts
        # read-only.
        self.top_ro = self.refuses or variant == "stream"
        self.base_file: dict[str, Any] = {}
        if variant == "base-file-ro":
            self.base_file = {"read-only": True}  # auto-read-only stays on: it does not matter
        elif variant == "base-file-aro-off":
            self.base_file = {"auto-read-only": False}

    # -- states ---------------------------------------------------------------------------
    def state(self, *, base_rw: bool = False, top_rw: bool | None = None, ok: bool = True,
              error: str | None = None, because: str, bug: KnownBug | None = None, job: str = ""
              ) -> Expect:
        """The chain with base-fmt / top-fmt read-write or not (while *job*, "commit" or "stream",
        runs); fds and the layers' image locks follow the rules (expectations/locks.py: a qcow2
        node takes write and resize on its file while read-write, and never shares them)."""
        top_rw = (not self.top_ro) if top_rw is None else top_rw
        base_file_ro = self.variant == "base-file-ro"
        static_base = self.variant == "base-file-aro-off"
        ro = {"base-fmt": not base_rw, "base-file": base_file_ro,
              "mid-fmt": True, "mid-file": False,
              "top-fmt": not top_rw, "top-file": False}
        fds = {"base": O_RDWR if (base_rw or static_base) else O_RDONLY,
               "mid": O_RDONLY,
               "top": O_RDWR if top_rw else O_RDONLY}
        above = {"base": NONE, "mid": JOB_INTERMEDIATE if job == "commit" else NONE,
                 "top": STREAM_COR if job == "stream" else NONE}
        rw = {"base": base_rw, "mid": False, "top": top_rw}
        perms = {layer: file_child("qcow2", above[layer], writable=rw[layer]) for layer in above}
        locks = {layer: lock_ranges(p) for layer, p in perms.items()}
        others = {f"{probe} {layer}": second_open(probe, "qcow2", p, str(self.chain.path(layer)))
                  for layer, p in perms.items() for probe in (QEMU_IMG_INFO, QEMU_IMG_INFO_U)}
        return Expect(ok, error, ro=ro, fds=fds, locks=locks, others=others, because=because, bug=bug)

    def layout(self) -> Layout:
        parts = ["base-fmt and mid-fmt read-only=on, every file node auto-read-only=on: dynamic "
                 "file-posix keeps the file nodes ro=false with O_RDONLY fds while nothing writes"]
        if not self.top_ro:
            parts.append("top-fmt is read-write, so it takes WRITE on top-file: O_RDWR (block.c "
                         "bdrv_default_perms_for_storage)")
        else:
            parts.append("top-fmt read-only=on" + (" (the only way to open it on storage that refuses "
                                                   "writes)" if self.refuses else " (block-stream's target)"))
        if self.variant == "base-file-ro":
            parts.append("base-file read-only=on: ro=true")
        if self.variant == "base-file-aro-off":
            parts.append("base-file auto-read-only=off: a read-write file node opens O_RDWR whatever its "
                         "users (file-posix raw_parse_flags)")
        return Layout(self.top_ro, self.base_file, self.state(because="; ".join(parts)))

    def refused(self, error: str, why: str) -> Expect:
        return self.state(ok=False, error=error,
                          because=f"{why}; the reopen is rolled back (bdrv_reopen_abort), no job is "
                                  "created and every node keeps its state")

    # -- jobs -----------------------------------------------------------------------------
    def plans(self) -> list[JobPlan]:
        v = self.variant
        commit = {"job-id": "j", "device": "top-fmt", "top-node": "mid-fmt", "base-node": "base-fmt"}
        active = {"job-id": "a", "device": "top-fmt", "base-node": "base-fmt"}
        if v == "base-file-ro":
            why = ("block-commit reopens base-fmt read-write, which needs WRITE on base-file; base-file "
                   "is read-only=on (auto-read-only only matters with read-only=off), so block.c "
                   "bdrv_node_refresh_perm refuses before anything is opened")
            return [JobPlan("block-commit", commit, self.refused(NODE_IS_READ_ONLY, why)),
                    JobPlan("block-commit", active, self.refused(NODE_IS_READ_ONLY, "active " + why))]
        if v == "stream":
            return [self.stream()]
        if v in ("commit", "commit-cancel", "base-file-aro-off"):
            return [self.commit(commit, cancel=v == "commit-cancel")]
        return [self.active_commit(active, v)]

    def _refused_open(self, layer: str, job: str) -> Expect:
        return self.refused(
            could_not_open(self.chain.path(layer), self.chain.storage.error_text),
            f"{job} reopens {layer}-fmt read-write; its auto-read-only file node must then open an "
            f"O_RDWR fd, which file-{self.chain.storage.kind} refuses")

    def commit(self, args: Mapping[str, Any], *, cancel: bool) -> JobPlan:
        args = {**args, "speed": 1}
        if self.refuses:
            return JobPlan("block-commit", args, self._refused_open("base", "block-commit"))
        during = self.state(base_rw=True, job="commit", because=(
            "block/commit.c commit_start: the base is read-only, so it is reopened read-write for the "
            "job (s->base_read_only); the read-write qcow2 takes WRITE on base-file, whose fd switches "
            "to O_RDWR. speed=1 keeps the job running so this state is seen for sure"))
        if self.variant == "base-file-aro-off":
            after_fd = ("; base-file has auto-read-only=off, so its fd stays O_RDWR (raw_parse_flags) "
                        "although nothing writes any more")
        else:
            after_fd = "; no WRITE left on base-file: O_RDONLY again (dynamic auto-read-only)"
        if cancel:
            return JobPlan("block-commit", args, during, statuses=("running",), finish=("cancel",),
                           event="BLOCK_JOB_CANCELLED", end=self.state(because=(
                               "block-job-cancel: block/commit.c commit_abort/commit_clean reopen the "
                               "base read-only again (s->base_read_only)" + after_fd)))
        return JobPlan("block-commit", args, during, statuses=("running",), finish=("set-speed-0",),
                       event="BLOCK_JOB_COMPLETED", end=self.state(because=(
                           "block-job-set-speed 0 lets the job finish; block/commit.c commit_clean "
                           "reopens the base read-only again (s->base_read_only)" + after_fd)))

    def stream(self) -> JobPlan:
        args = {"job-id": "s", "device": "top-fmt", "speed": 1}
        if self.refuses:
            return JobPlan("block-stream", args, self._refused_open("top", "block-stream"))
        during = self.state(top_rw=True, job="stream", because=(
            "block/stream.c stream_start: the top is read-only, so it is reopened read-write for the "
            "job (bs_read_only); top-file's fd switches to O_RDWR. speed=1 keeps the job running"))
        return JobPlan("block-stream", args, during, statuses=("running",), finish=("set-speed-0",),
                       event="BLOCK_JOB_COMPLETED", end=self.state(top_rw=False, because=(
                           "block/stream.c stream_clean reopens the top read-only again (bs_read_only); "
                           "no WRITE left on top-file: O_RDONLY")))

    def active_commit(self, args: Mapping[str, Any], variant: str) -> JobPlan:
        if variant == "active-commit-cancel-early":
            args = {**args, "speed": 1}
        if self.refuses:
            return JobPlan("block-commit", args, self._refused_open("base", "active block-commit"))
        during = self.state(base_rw=True, job="commit", because=(
            "block/mirror.c commit_active_start: the base is read-only, so it is reopened read-write "
            "before the mirror job starts; base-file's fd switches to O_RDWR"))
        if variant == "active-commit-complete":
            return JobPlan("block-commit", args, during, statuses=("running", "ready"),
                           finish=("ready", "complete"), event="BLOCK_JOB_COMPLETED",
                           end=self.state(base_rw=True, because=(
                               "block-job-complete after READY: the base replaces the top "
                               "(bdrv_replace_node) and block/mirror.c mirror_exit_common gives it the "
                               "top's read-only flag (false): the base stays read-write, O_RDWR, as the "
                               "new active layer. top-fmt is still a read-write qcow2 node (only taken "
                               "out of the graph), so top-file keeps its O_RDWR fd")))
        def cancel_end(bug: KnownBug) -> Expect:
            return self.state(because=(
                "the job was cancelled: the base is a backing file again and should be read-only, as "
                "its node says (read-only=on), with an O_RDONLY fd - as the intermediate commit and "
                "block-stream restore it, and as mirror_exit_common does after an abort since "
                "7d99ae59a2"), bug=bug)
        if variant == "active-commit-cancel":
            # After READY a cancel completes the mirror without pivoting: BLOCK_JOB_COMPLETED
            # (qapi block-job-cancel).
            return JobPlan("block-commit", args, during, statuses=("running", "ready"),
                           finish=("ready", "cancel"), event="BLOCK_JOB_COMPLETED",
                           end=cancel_end(ACTIVE_COMMIT_SOFT_CANCEL))
        # speed=1: the mirror copies its first chunk and sleeps, never READY: a real cancel.
        return JobPlan("block-commit", args, during, statuses=("running",), finish=("cancel",),
                       event="BLOCK_JOB_CANCELLED", end=cancel_end(ACTIVE_COMMIT_ABORT))

    # -- data --------------------------------------------------------------------------------
    def unchanged_because(self) -> str:
        """Why the layers :meth:`data` lists as unchanged must be bit-identical."""
        if self.refuses or self.variant == "base-file-ro":
            return "no job could start, so nothing wrote to any layer"
        return "the job reads it but never writes to it (a read-only backing node)"

    def data(self) -> tuple[list[DataCheck], tuple[str, ...]]:
        """What the images must hold after QEMU quit, and which layers must be bit-identical."""
        if self.refuses or self.variant == "base-file-ro":
            return [], LAYERS  # no job ever started: every layer as created
        pat = {layer: self.chain.images[layer].patterns for layer in LAYERS}
        every = [*pat["base"], *pat["mid"], *pat["top"]]

        def through(layer: str, patterns: list[Pattern], why: str) -> list[DataCheck]:
            return [DataCheck(layer, why, pattern=p) for p in patterns]

        v = self.variant
        view = through("top", every, "the guest's view through top is the same before and after the "
                                     "job: each layer's pattern at its offset")
        if v in ("commit", "base-file-aro-off"):
            return ([*through("base", [*pat["base"], *pat["mid"]],
                              "the commit copied mid's data into base (which has no backing file)"),
                     *view,
                     DataCheck("top", "block/commit.c drops mid from the chain and rewrites top's "
                                      "backing file name (top is read-write)", backing="base")],
                    ("mid",))
        if v == "commit-cancel":
            return ([*view, DataCheck("top", "a cancelled commit leaves the chain as it was",
                                      backing="mid")], ("mid",))
        if v == "stream":
            return ([*through("top", every, "block-stream copied the whole chain into top"),
                     DataCheck("top", "block-stream without base-node leaves top without a backing "
                                      "file", backing="")], ("base", "mid"))
        if v in ("active-commit-complete", "active-commit-cancel"):
            return ([*through("base", every, "the active commit mirrored top and mid into base "
                                             "(complete, or a cancel after READY: the copy is in sync)"),
                     *view], ("mid",))
        return [*view], ("mid",)  # active-commit-cancel-early: a partial copy, same view
