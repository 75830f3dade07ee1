"""Folding and rendering the expected-behaviour tables (reference/tables.py, reference/behaviour.py),
without QEMU: plain tables and the capabilities of a made-up build."""
from __future__ import annotations

from helpers_unit import caps

from pytest_qemublock.reference import behaviour
from pytest_qemublock.reference.tables import ANY, Row, Table, citations, fold, render

DYNAMIC = "BlockdevOptions.file:dynamic-auto-read-only"


def _table() -> Table:
    t = Table("T", "", ("backend", "iface"), ("expected",))
    for b in ("a", "b", "c"):
        for i in ("x", "y"):
            t.add((b, i), ("fails" if (b, i) == ("c", "y") else "opens",))
    return t


def test_fold_lists_the_values_of_equal_rows_and_says_any_for_all() -> None:
    rows = fold(_table()).rows
    assert rows == [Row((ANY, "x"), ("opens",)), Row(("a, b", "y"), ("opens",)),
                    Row(("c", "y"), ("fails",))]
    # folding the other axis first gives another, equally true, table
    assert fold(_table(), ("iface", "backend")).rows == [
        Row(("a, b", ANY), ("opens",)), Row(("c", "x"), ("opens",)), Row(("c", "y"), ("fails",))]


def test_fold_keeps_rows_whose_results_differ() -> None:
    t = _table()
    t.rows = [r if r.axes != ("a", "x") else Row(r.axes, ("other",)) for r in t.rows]
    assert Row(("a", "x"), ("other",)) in fold(t).rows


def test_render_escapes_pipes_and_counts_rows() -> None:
    t = Table("T", "intro", ("k",), ("v",))
    t.add(("a|b",), ("line\nbreak",))
    text = render(t, 2)
    assert text.splitlines()[:5] == ["## T", "", "intro", "", "1 rows."]
    assert "| a\\|b | line break |" in text


def test_citations_name_files_functions_and_commits() -> None:
    because = ("file-posix keeps ro=false (file-posix.c raw_open_common, 23dece19da); block/curl.c has "
               "no .bdrv_reopen_prepare: block.c bdrv_reopen_prepare refuses")
    assert citations(because) == ("file-posix.c raw_open_common, 23dece19da, block/curl.c, "
                                  "block.c bdrv_reopen_prepare")


def test_open_rows_show_the_capability_they_depend_on() -> None:
    rows = fold(behaviour.open_table(caps(dynamic=True))).rows
    erofs = [r for r in rows if "file-erofs" in r.axes[0] and r.axes[1] == "proto" and r.axes[4] == "on"
             and r.axes[3] != "on"]
    assert erofs and all(r.results[3] == f"{DYNAMIC}: yes" for r in erofs)
    assert erofs[0].results[0] == "succeeds, then n0.ro=False, image fd O_RDONLY"
    refused = [r for r in rows if r.results[0].startswith("fails with exactly \"Could not open '<image>'")]
    assert refused and all(r.results[3] == "" for r in refused)


def test_the_open_matrix_folds_into_few_rows_covering_every_case() -> None:
    table = behaviour.open_table(caps())
    folded = fold(table, behaviour.SCENARIOS[0][1])
    assert len(table.rows) == 72 * sum(len(b.storages) for b in behaviour.REGISTRY.values())
    assert len(folded.rows) < len(table.rows) // 10


def test_builds_that_differ_get_a_table_each() -> None:
    doc = behaviour.document([("old", caps((7, 2), dynamic=False)), ("new", caps())])
    assert "## Open (suites/test_open.py, expectations/open.py) — build old" in doc
    assert "## Open (suites/test_open.py, expectations/open.py) — build new" in doc
    assert f"{DYNAMIC}: no" in doc and f"{DYNAMIC}: yes" in doc
    # the writers' rules ask no capability: one table for both
    assert "(expect_writer_refused) — builds old, new alike" in doc
    same = behaviour.document([("a", caps()), ("b", caps())])
    assert "— builds a, b alike" in same and "— build a\n" not in same


def test_every_backend_of_a_driver_is_written_as_its_backend_glob() -> None:
    nbd = [n for n, b in behaviour.REGISTRY.items() if b.driver == "nbd"]
    assert len(nbd) > 1
    ro = [f"{n}-ro" for n in nbd]
    assert behaviour.abbreviate(", ".join(["file-erofs", *ro, "http-ro"])) == "file-erofs, nbd-*-ro, http-ro"
    both = [f"{n}-{st}" for n in nbd for st in ("rw", "ro")]
    assert behaviour.abbreviate(", ".join([*both, "ssh-rw"])) == "nbd-*, ssh-rw"
    # one nbd backend missing: listed one by one
    assert behaviour.abbreviate(", ".join(ro[1:])) == ", ".join(ro[1:])


def test_reopen_rows_fold_the_nbd_servers_and_keep_the_driver_errors() -> None:
    rows = behaviour._abbreviated(fold(behaviour.reopen_table(caps()), behaviour.SCENARIOS[-1][1])).rows
    nbd_ro = [r for r in rows if r.axes[0] == "nbd-*-ro"]
    refused = "fails with exactly \"Can't reopen read-only NBD mount as read/write\""
    assert nbd_ro and all(r.results[0] == refused for r in nbd_ro)
    no_reopen = "fails with exactly \"Block format 'ssh' used by node 'n0'"
    assert any(r.results[0].startswith(no_reopen) for r in rows)
