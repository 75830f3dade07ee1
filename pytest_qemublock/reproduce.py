"""``reproduce.sh``: a failing or known-bug case's evidence as a plain shell script.

The script replays ``replay.jsonl`` (evidence.py) in order with plain QEMU and
util-linux: the storage set-up (a mount namespace holder and its ``mount``
commands, ``chmod``), every ``qemu-img``/``qemu-io`` run, every process (QEMU
with QMP on a unix socket instead of the harness's socketpair; a server's
inherited listening socket bound by the client first), every QMP command and
the events waited for, and every ``/proc`` observation. Each one is compared
with what the run saw (``# observed:``); at each check the expectation and
its rule are comments (``# expected:``, ``# because:``). The verdict rests on
the steps whose check found QEMU deviating (all steps if none did):
``REPRODUCED`` (exit 0), ``NOT REPRODUCED`` (exit 1), ``SETUP ERROR`` (exit 2).

What the scenario expected comes as data (the journal's ``check`` entries),
so this module needs nothing above the evidence layer.
"""
from __future__ import annotations

import json
import re
import shlex
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import replay_client
from .replay_client import summarize

SCRIPT = "reproduce.sh"
_LIB = Path(__file__).with_name("reproduce_lib.sh")


def status_text(status: int | None) -> str:
    if status is None:
        return "still running"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def ended_text(status: int | None, stderr: str) -> str:
    """How a process ended as the script sees it: status and the last stderr line
    (an assertion, or the start-up error)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return status_text(status) + (f": {lines[-1].strip()}" if lines else "")


def tool_text(rc: int, stderr: str) -> str:
    return f"exit {rc}" + (": " + " | ".join(stderr.strip().splitlines()) if stderr.strip() else "")


class _Names:
    """Run paths and binaries -> script variables, in text and in words."""

    def __init__(self, env: Mapping[str, Any]) -> None:
        roots = dict(env.get("roots", {}))
        self.roots = sorted(roots.items(), key=lambda kv: -len(kv[0]))
        self.programs: dict[str, str] = dict(env.get("programs", {}))
        self.data_dir: str = env.get("data_dir", "")
        self.pids: dict[str, str] = {}  # run pid -> script name

    def text(self, s: str) -> str:
        for path, var in self.roots:
            s = s.replace(path, var)
        return s

    def word(self, token: str) -> str:
        """One shell word: variables double-quoted, the rest single-quoted where needed."""
        if token in self.programs:
            return f'"${self.programs[token]}"'
        if self.data_dir and token == self.data_dir:
            return '"$QEMU_DATA_DIR"'
        token = self.text(token)
        parts = re.split(r"(\$W\b|\$W(?=/))", token)
        return "".join('"$W"' if p == "$W" else shlex.quote(p) if p else "" for p in parts) or "''"

    def argv(self, argv: Sequence[str], *, qmp_fd: dict[int, str] | None = None) -> str:
        out = []
        prev = ""
        for token in argv:
            if prev == "-t" and token in self.pids:
                out.append(f'"${{PID[{self.pids[token]}]}}"')
            else:
                word = token
                for fd, path in (qmp_fd or {}).items():
                    word = re.sub(rf"\bfd={fd}\b", f"path={path},server=on,wait=off", word)
                out.append(self.word(word))
            prev = token
        return " ".join(out)


def _q(text: str) -> str:
    return shlex.quote(text)


def _comment(prefix: str, text: str) -> list[str]:
    lines = text.strip().splitlines() or [""]
    return [f"# {prefix}{lines[0]}"] + [f"#   {line}" for line in lines[1:]]


def _groups(entries: list[dict[str, Any]]) -> list[bool]:
    """Per entry: is it part of a step whose check found a deviation (the verdict's steps)?
    Without any deviating check, every entry counts."""
    key = [False] * len(entries)
    start = 0
    any_deviation = False
    for i, e in enumerate(entries):
        if e["kind"] == "check":
            if e.get("problems"):
                any_deviation = True
                for j in range(start, i + 1):
                    key[j] = True
            start = i + 1
    return key if any_deviation else [True] * len(entries)


def render(entries: list[dict[str, Any]], *, case: str, outcome: str, env: Mapping[str, Any]) -> str:
    """The whole script for one case's journal *entries*."""
    names = _Names(env)
    key = _groups(entries)
    ended = {e["pid"]: e for e in entries if e["kind"] == "ended"}
    peers: dict[str, str] = {}  # QMP peer label -> script process name
    # a QEMU lent by a shared target answers without a greeting in this case's journal
    greeted = {e["peer"] for e in entries if e["kind"] == "qmp" and e["dir"] == "<"}
    used: dict[str, int] = {}
    body: list[str] = []
    pending: dict[str, list[dict[str, Any]]] = {}  # peer -> events seen since its last command
    scm: dict[str, str] = {}
    last_spawn = ""
    orphan = ""  # a peer journaled before its process (a lent QEMU)
    deviations: list[str] = []  # what the checks found, for the verdict line
    dirs: set[str] = set()
    uses_eacces = False

    def k(i: int) -> str:
        return "key" if key[i] else "ctx"

    for i, e in enumerate(entries):
        kind = e["kind"]
        if kind == "storage":
            d = names.text(str(e["directory"]))
            dirs.add(d)
            uses_eacces |= e["storage"] == "eacces"
            body += ["", f"# -- {e['storage']} storage: {d}"]
        elif kind == "spawn":
            if str(e["pid"]) in names.pids:
                continue  # a shared target's process, journaled again by a test it is lent to
            used[e["name"]] = used.get(e["name"], 0) + 1
            name = e["name"] + (f"-{used[e['name']]}" if used[e["name"]] > 1 else "")
            names.pids[str(e["pid"])] = last_spawn = name
            qmp_fd = {int(fd): f"$W/qmp/{name}.sock" for fd, a in e.get("sockets", {}).items() if a == "pair"}
            if not qmp_fd:
                last_spawn = ""  # a server: no QMP peer follows
            listen = [f"{names.word(names.text(a))}={fd}" for fd, a in e.get("sockets", {}).items()
                      if a != "pair"]
            envs = [f"{k_}={names.word(v)}" for k_, v in e.get("env", {}).items()
                    if v != env.get("module_dir") or k_ != "QEMU_MODULE_DIR"]
            if "mountpoint" in e:
                dirs.add(names.text(str(e["mountpoint"])))
            uses_eacces |= any("--reuid" in a for a in e["argv"])
            body += ["", f"# {e['name']} (pid {e['pid']} in the run)"]
            cmd = ("env " + " ".join(envs) + " " if envs else "") + names.argv(e["argv"], qmp_fd=qmp_fd)
            body.append(f"start {name} {' '.join(listen)} -- {cmd}".replace("  ", " "))
            if "mountpoint" in e:
                body.append(f"wait_mntns {name}")
            if orphan and qmp_fd:
                peers[orphan] = name
                body.append(f"connect {k(i)} {name} \"$W/qmp/{name}.sock\"")
                orphan = last_spawn = ""
            end = ended.get(e["pid"])
            if qmp_fd and end is not None and not _greeted_any(entries, e, greeted):
                text = names.text(ended_text(end["status"], end["stderr"]))
                body += _comment("observed: ", f"{e['name']} did not start: {text}")
                body.append(f"exits {k(i)} {name} {_q(text)}")
                last_spawn = ""
        elif kind == "peer":
            if not last_spawn:
                orphan = e["label"]
            else:
                peers[e["label"]] = last_spawn
                if e["label"] in greeted:
                    body.append(f"connect {k(i)} {last_spawn} \"$W/qmp/{last_spawn}.sock\"")
                last_spawn = ""
        elif kind == "qmp":
            peer = peers.get(e["peer"], e["peer"])
            msg = e["msg"]
            if e["dir"] == "<" and "event" in msg:
                pending.setdefault(peer, []).append(msg)
            elif e["dir"] == ">" and "scm_rights" in msg:
                scm[peer] = names.text(str(msg.get("socket") or ""))
            elif e["dir"] == ">" and "execute" in msg:
                for ev in pending.pop(peer, []):
                    job = ev["event"] == "JOB_STATUS_CHANGE"
                    status = ev.get("data", {}).get("status", "") if job else ""
                    body.append(f"event {k(i)} {peer} {ev['event']} {status}".rstrip())
                reply = _reply(entries, i, e["peer"])
                text = json.dumps(msg)
                if reply is None:
                    observed = "gone"
                else:
                    observed = names.text(summarize(msg["execute"], reply))
                fd = scm.pop(peer, "")
                if fd:
                    body.append(f"qmp_fd {k(i)} {peer} {names.word(fd)} {_q(names.text(text))}")
                else:
                    body.append(f"qmp {k(i)} {peer} {_q(names.text(text))}")
                body += _comment("observed: ", observed)
                body.append(f"same {k(i)} {_q(peer + ': ' + msg['execute'])} {_q(observed)}")
            elif e["dir"] == "!" and "disconnected" in msg:
                pid = next((p for p, n in names.pids.items() if n == peer), None)
                end = ended.get(int(pid)) if pid else None
                if end is not None:
                    text = names.text(ended_text(end["status"], end["stderr"]))
                    body += _comment("observed: ", f"{peer} died: {text}")
                    body.append(f"exits {k(i)} {peer} {_q(text)}")
        elif kind in ("fds", "locks"):
            peer = peers.get(e["peer"], e["peer"])
            path = names.word(str(e["path"]))
            body += _comment("observed: ", f"{peer} {e['label']} {kind}: {e['value']}")
            body.append(f"observe {k(i)} {kind} {peer} {path} {_q(str(e['value']))}")
        elif kind == "tool":
            text = names.text(tool_text(e["rc"], e.get("stderr", "")))
            what = Path(e["argv"][0]).name
            if e.get("made"):
                body.append(f"run {names.argv(e['argv'])}")
            else:
                body.append(f"tool {k(i)} {_q(text)} {names.argv(e['argv'])}")
                body += _comment("observed: ", f"{what}: {text}")
        elif kind == "run":
            body.append(f"run {names.argv([str(a) for a in e['argv']])}")
        elif kind == "check":
            observed_text = names.text(e["observed"])
            body += ["", f"# ---- check: {names.text(e['what'])}"]
            body += _comment("expected: ", names.text(e["expected"]))
            if e.get("because"):
                body += _comment("because:  ", e["because"])
            body += _comment("observed: ", observed_text)
            if e.get("problems"):
                body += _comment("deviation: ", names.text("; ".join(e["problems"])))
                deviations.append(f"{names.text(e['what'])}: " + names.text("; ".join(e["problems"])))
            if e.get("bug"):
                body += _comment("known QEMU bug ", f"{e['bug']}\npredicts: {e.get('predicts')}")
            body.append(f"say {_q('== check ' + names.text(e['what']) + ': the run saw ' + observed_text)}")
    for path in entries_paths(body):
        dirs.add(path)
    body += ["", f"verdict {_q('; '.join(deviations) or 'QEMU did what the run observed')}"]
    return _assemble(body, dirs, case=case, outcome=outcome, env=env, eacces=uses_eacces)


def _greeted_any(entries: list[dict[str, Any]], spawn: dict[str, Any], greeted: set[str]) -> bool:
    """Whether the QMP peer created right after *spawn* got a greeting."""
    idx = entries.index(spawn)
    for e in entries[idx + 1:]:
        if e["kind"] == "peer":
            return e["label"] in greeted
        if e["kind"] == "spawn":
            break
    return False


def _reply(entries: list[dict[str, Any]], i: int, peer: str) -> Any:
    """The reply to the command at *i* (None: QEMU went away first)."""
    for e in entries[i + 1:]:
        if e["kind"] != "qmp" or e["peer"] != peer:
            continue
        msg = e["msg"]
        if e["dir"] == "!":
            return None
        if e["dir"] == "<" and ("return" in msg or "error" in msg):
            return msg
    return None


def entries_paths(lines: list[str]) -> set[str]:
    """The directories the script's ``$W`` paths need."""
    out = set()
    for m in re.finditer(r"\$W\"?(/[^\s\"',=:;}]*)", "\n".join(lines)):
        parent = str(Path(m.group(1)).parent)
        if parent != "/":
            out.add("$W" + parent)
    return out


def _assemble(body: list[str], dirs: set[str], *, case: str, outcome: str,
              env: Mapping[str, Any], eacces: bool) -> str:
    progs = env.get("program_defaults", {})
    head = [
        "#!/bin/bash",
        "# Generated by pytest-qemublock from the evidence of one case: what QEMU was made to do,",
        "# replayed with plain QEMU, util-linux and a stdlib-only python3 QMP client. See",
        "# docs/known-bugs.md, \"Reproducers\".",
        *_comment("case:    ", case),
        *_comment("build:   ", str(env.get("build", "?"))),
        *_comment("outcome: ", outcome),
        "#",
        "# Every step is compared with the run (\"# observed:\"). The verdict (last line) rests on the",
        "# steps whose check saw QEMU deviate from the expectation (all steps if none did):",
        "#   REPRODUCED (exit 0): QEMU still does what the run observed there;",
        "#   NOT REPRODUCED (exit 1): it does not (the differences are listed);",
        "#   SETUP ERROR (exit 2): the replay itself could not run.",
        "# Binaries: the iotests variables, default the run's build. Also QEMU_DATA_DIR (-L),",
        "# QEMU_MODULE_DIR, QMP_TIMEOUT (s, every wait; default 10). Needs: bash, python3, util-linux.",
        "# Not replayed: the harness ran every process in a private PID and network namespace",
        "# (its TCP servers listened on a loopback of their own; here: the host's, same ports).",
        "set -uo pipefail",
    ]
    for var, default in progs.items():
        head.append(f": \"${{{var}:={default}}}\"")
    head.append(f"QEMU_DATA_DIR=${{QEMU_DATA_DIR-{_q(env.get('data_dir', ''))}}}")
    if env.get("module_dir"):
        head.append(f"export QEMU_MODULE_DIR=${{QEMU_MODULE_DIR-{_q(env['module_dir'])}}}")
    head.append("QMP_TIMEOUT=${QMP_TIMEOUT:-10}")
    head.append('W=$(mktemp -d "${TMPDIR:-/tmp}/qemu-repro.XXXXXX") || exit 2')
    head.append('mkdir -m 0700 "$W/qmp"  # the QMP sockets')
    if eacces:
        head.append('chmod 0755 "$W"  # QEMU runs as uid 65534: it must reach the images')
        head.append('chown 65534:65534 "$W/qmp"  # and create its QMP socket')
        head.append('setpriv --reuid=65534 --regid=65534 --clear-groups -- test -x "$W" ||')
        head.append('    { echo "SETUP ERROR: uid 65534 cannot reach $W (TMPDIR must be world-searchable)"; '
                    'rm -rf "$W"; exit 2; }')
    head.append("export W QMP_TIMEOUT")
    lib = _LIB.read_text(encoding="utf-8")
    client = Path(replay_client.__file__).read_text(encoding="utf-8")
    quoted = sorted('"$W"' + shlex.quote(d[2:]) for d in dirs)
    mk = [f"mkdir -p {' '.join(quoted)}"] if dirs else []
    return "\n".join([
        *head, "", "# -- the QMP client and /proc reader (python3 stdlib only)",
        "cat >\"$W/replay_client.py\" <<'REPLAY_CLIENT_EOF'", client.rstrip("\n"), "REPLAY_CLIENT_EOF",
        "", lib.rstrip("\n"), "", "# -- the run, step by step", *mk, *body, ""])


def write(dest: Path, *, case: str, outcome: str, env: Mapping[str, Any]) -> Path | None:
    """Write ``reproduce.sh`` into the kept evidence *dest* (None: nothing was journaled)."""
    journal = dest / "replay.jsonl"
    if not journal.exists():
        return None
    path = dest / SCRIPT
    try:
        entries = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines() if line]
        text = render(entries, case=case, outcome=outcome, env=env)
    except Exception as e:  # noqa: BLE001 - the case's own outcome must stand whatever this does
        why = f"{type(e).__name__}: {e}"
        text = ("#!/bin/bash\n# pytest-qemublock could not make this case's reproducer from replay.jsonl\n"
                f"echo {_q('SETUP ERROR: no reproducer: ' + why)}\nexit 2\n")
    path.write_text(text, encoding="utf-8")
    path.chmod(0o755)
    return path
