"""reproduce.py without QEMU: a journal in, the script's lines out (paths, binaries,
sockets, the steps the verdict rests on), and the reply summaries both sides share."""
from __future__ import annotations

import subprocess

from pytest_qemublock.replay_client import summarize
from pytest_qemublock.reproduce import ended_text, render, write

RUN = "/dev/shm/qb-main-abc"
QEMU = "/opt/q/bin/qemu-system-x86_64"
ENV = {"roots": {RUN: "$W"}, "programs": {QEMU: "QEMU_PROG", "/opt/q/bin/qemu-nbd": "QEMU_NBD_PROG"},
       "program_defaults": {"QEMU_PROG": QEMU}, "data_dir": "/opt/q/share", "module_dir": "",
       "build": "b: QEMU 10.0.2"}
IMG = f"{RUN}/t0001/st-rw/data/raw.img"


def journal(problems: list[str]) -> list[dict[str, object]]:
    return [
        {"kind": "storage", "storage": "rw", "directory": f"{RUN}/t0001/st-rw/data"},
        {"kind": "tool", "argv": ["/opt/q/bin/qemu-img", "create", "-q", "-f", "raw", IMG, "1M"], "rc": 0,
         "stderr": ""},
        {"kind": "spawn", "name": "qemu-nbd", "pid": 10, "env": {}, "sockets": {"7": f"unix:{RUN}/s/n.sock"},
         "argv": ["bash", "-c", 'exec 3<&7 7<&-; LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "bash",
                  "/opt/q/bin/qemu-nbd", "-r", IMG]},
        {"kind": "spawn", "name": "qemu", "pid": 11, "env": {}, "sockets": {"9": "pair"},
         "argv": [QEMU, "-L", "/opt/q/share", "-chardev", "socket,id=qmp0,fd=9", "-mon", "chardev=qmp0"]},
        {"kind": "peer", "label": "qemu"},
        {"kind": "qmp", "peer": "qemu", "dir": "<", "msg": {"QMP": {}}},
        {"kind": "qmp", "peer": "qemu", "dir": ">", "msg": {"execute": "blockdev-add",
                                                            "arguments": {"filename": IMG}}},
        {"kind": "qmp", "peer": "qemu", "dir": "<", "msg": {"return": {}}},
        {"kind": "fds", "peer": "qemu", "label": "image", "path": IMG, "value": "O_RDWR"},
        {"kind": "check", "what": "step 1", "expected": "succeeds", "because": "rule 1", "observed": "ok",
         "problems": [], "bug": None, "predicts": None},
        {"kind": "qmp", "peer": "qemu", "dir": ">", "msg": {"execute": "blockdev-reopen", "arguments": {}}},
        {"kind": "qmp", "peer": "qemu", "dir": "<", "msg": {"error": {"class": "GenericError",
                                                                      "desc": f"Could not open '{IMG}'"}}},
        {"kind": "check", "what": "step 2", "expected": "succeeds", "because": "rule 2",
         "observed": f"failed: Could not open '{IMG}'", "problems": problems, "bug": None, "predicts": None},
        {"kind": "ended", "name": "qemu", "pid": 11, "status": 0, "stderr": ""},
    ]


def body(text: str) -> list[str]:
    return text.split("# -- the run, step by step", 1)[1].splitlines()


def test_paths_binaries_and_sockets_become_the_scripts_own():
    lines = body(render(journal(["failed"]), case="c", outcome="failed: x", env=ENV))
    text = "\n".join(lines)
    assert RUN not in text
    # qemu-img is not one of ENV's programs: its path stays
    assert ("tool ctx 'exit 0' /opt/q/bin/qemu-img create -q -f raw "
            '"$W"/t0001/st-rw/data/raw.img 1M') in lines
    assert ('start qemu-nbd unix:"$W"/s/n.sock=7 -- bash -c \'exec 3<&7 7<&-; LISTEN_PID=$$ '
            'LISTEN_FDS=1 exec "$@"\' bash "$QEMU_NBD_PROG" -r "$W"/t0001/st-rw/data/raw.img') in lines
    assert ('start qemu -- "$QEMU_PROG" -L "$QEMU_DATA_DIR" -chardev '
            'socket,id=qmp0,path="$W"/qmp/qemu.sock,server=on,wait=off -mon chardev=qmp0') in lines
    assert "mkdir -p \"$W\"/qmp \"$W\"/s \"$W\"/t0001/st-rw \"$W\"/t0001/st-rw/data" in lines
    assert "# observed: error GenericError: Could not open '$W/t0001/st-rw/data/raw.img'" in lines


def test_the_verdict_rests_on_the_deviating_step():
    lines = body(render(journal(["failed"]), case="c", outcome="failed: x", env=ENV))
    assert "connect ctx qemu \"$W/qmp/qemu.sock\"" in lines
    assert "observe ctx fds qemu \"$W\"/t0001/st-rw/data/raw.img O_RDWR" in lines
    assert any(line.startswith("qmp key qemu '{\"execute\": \"blockdev-reopen\"") for line in lines)
    assert "# deviation: failed" in lines and "# because:  rule 2" in lines
    assert lines[-1] == "verdict 'step 2: failed'"
    # no check found a deviation (a failure outside the checks): every step counts
    lines = body(render(journal([]), case="c", outcome="failed: x", env=ENV))
    assert "connect key qemu \"$W/qmp/qemu.sock\"" in lines


def test_replies_and_ends_are_summarized_alike():
    nodes = {"return": [{"node-name": "n0", "ro": True}, {"node-name": "#block123", "ro": False}]}
    assert summarize("query-named-block-nodes", nodes) == "return ro: n0=true"
    assert summarize("x", {"error": {"class": "C", "desc": "at /tmp/w/a"}}, "/tmp/w") == "error C: at $W/a"
    assert summarize("human-monitor-command", {"return": "err\r\n"}) == 'return "err"'
    end = ended_text(-6, "warning\nqemu: Assertion `x' failed.\n")
    assert end == "killed by SIGABRT: qemu: Assertion `x' failed."


def test_a_journal_that_cannot_be_read_gives_a_script_that_says_so(tmp_path):
    # a journal cut short (the process died mid-line) must not turn the case's outcome into an error
    (tmp_path / "replay.jsonl").write_text('{"kind": "spawn", "name"\n')
    script = write(tmp_path, case="c", outcome="failed", env=ENV)
    assert script is not None
    res = subprocess.run(["bash", str(script)], check=False, capture_output=True, text=True, timeout=20)
    assert res.returncode == 2
    assert res.stdout.startswith("SETUP ERROR: no reproducer: JSONDecodeError: ")
