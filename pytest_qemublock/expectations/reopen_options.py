"""Expectations of reopen's option validation (suites/test_reopen_options.py).

A reopen with a value that is not a boolean for ``read-only`` /
``auto-read-only`` is refused before anything is reopened, so the node keeps
its ``ro`` flag and its fd:

* QMP ``blockdev-reopen`` checks the argument against the schema
  (``BlockdevOptions``): qapi/qobject-input-visitor.c
  ``qobject_input_type_bool`` fails with ``Invalid parameter type for
  'options[0].<name>', expected: boolean``;
* qemu-io's ``reopen -o`` (the tool, and HMP ``qemu-io``): qemu-io-cmds.c
  ``reopen_f`` takes any value (its ``reopen_opts`` has no descriptions)
  and calls ``bdrv_reopen``; block.c ``bdrv_reopen_prepare`` absorbs the
  options into ``bdrv_runtime_opts``, where both are booleans:
  util/qemu-option.c ``parse_option_bool`` -> qapi/qapi-util.c
  ``qapi_bool_parse``: ``Parameter '<name>' expects 'on' or 'off'``
  (iotest 133 has the same lines; before 8eb4b07b6f an assertion in
  ``update_flags_from_options`` aborted first). Checked against 7.2.22 and 10.0.2.
"""
from __future__ import annotations

import re

from ..scenario.outcome import Expect
from .common import O_RDONLY, O_RDWR, image_fd

#: the options a reopen gets a non-boolean for
OPTIONS = ("auto-read-only", "read-only")
#: the value that is no boolean
BAD = "qux"

QMP_BECAUSE = ("qapi/qobject-input-visitor.c qobject_input_type_bool: a QMP argument of the wrong "
               "type is refused while the command's arguments are visited, before bdrv_reopen_multiple")
QEMUOPTS_BECAUSE = ("qemu-io-cmds.c reopen_f passes the value on to bdrv_reopen; block.c "
                    "bdrv_reopen_prepare: qemu_opts_absorb_qdict into bdrv_runtime_opts -> qapi_bool_parse "
                    "refuses it before anything is reopened (no assertion since 8eb4b07b6f)")


def opened(storage_readonly: bool, because: str = "") -> Expect:
    """The node n0 (file, read-only=off) as opened (:func:`node_options`): ro=false, and an
    O_RDWR fd on writable storage (auto-read-only=off), O_RDONLY on storage that refuses
    writes (auto-read-only=on: dynamic auto-read-only)."""
    return Expect(True, ro={"n0": False}, fds=image_fd(O_RDONLY if storage_readonly else O_RDWR),
                  because=because or "block/file-posix.c raw_open_common: read-only=off without "
                                     "auto-read-only opens O_RDWR; with auto-read-only=on and no writer "
                                     "the fd is O_RDONLY and ro stays false (dynamic auto-read-only, "
                                     "raw_check_perm, 23dece19da)")


def node_options(storage_readonly: bool) -> dict[str, bool]:
    """n0's options: auto-read-only only where the storage needs it to open at all."""
    return {"read-only": False, "auto-read-only": storage_readonly}


def qmp_refused(option: str, storage_readonly: bool) -> Expect:
    """``blockdev-reopen`` of n0 with *option* = "qux"."""
    text = f"Invalid parameter type for 'options[0].{option}', expected: boolean"
    return opened(storage_readonly).replace(ok=False, error=re.escape(text),
                                            because=f"{QMP_BECAUSE}; so n0 is left as it was opened")


def qemuopts_refused(option: str, storage_readonly: bool) -> Expect:
    """qemu-io's ``reopen -o <option>=qux`` on n0 (HMP or the tool)."""
    text = f"Parameter '{option}' expects 'on' or 'off'"
    return opened(storage_readonly).replace(ok=False, error=re.escape(text),
                                            because=f"{QEMUOPTS_BECAUSE}; so n0 is left as it was opened")
