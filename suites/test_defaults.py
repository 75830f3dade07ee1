"""Defaults and inheritance: -drive, backing children, the tools.

* ``-drive`` turns auto-read-only on, so a raw image on read-only storage
  opens, a qcow2 one does not (it needs WRITE on its file at once);
* backing files opened from an image header are read-only
  (``read-only=on,auto-read-only=off`` for COW children);
* qemu-img / qemu-io / qemu-nbd on read-only storage: read-only uses work,
  writes fail with the storage's error, even with auto-read-only=on;
* who may write through an export when ``writable`` is left out (qemu-nbd:
  everyone unless ``-r``; qsd ``--export``, ``nbd-server-add``,
  ``block-export-add``: nobody unless writable=on), read with ``qemu-nbd -L``,
  with the flags a client sees (readonly, or trim / write-zeroes) and a second
  process opening the export read-write and read-only (read-only nodes:
  ``test_export_clients.py``);
* read-only of a qcow2 node's ``file``, ``backing`` and ``data-file`` child
  left out or given, under a read-only and a read-write parent, through
  ``blockdev-add`` and ``-drive``;
* auto-read-only of the same children (a read-write file node on read-only
  storage) left out or given, under a parent whose own is left out or given:
  it decides whether the child opens at all.
"""
import json
import re

import pytest

from pytest_qemublock.backends import nbd
from pytest_qemublock.expectations import O_RDONLY, O_RDWR, defaults
from pytest_qemublock.host import procfs
from pytest_qemublock.qemu.instance import LaunchError
from pytest_qemublock.scenario import drive, exports, matrix, outcome

pytestmark = pytest.mark.defaults

FILE_STORAGES = [("file", st) for st in ("rw", "erofs", "eacces")]
RO_STORAGES = [("file", st) for st in ("erofs", "eacces")]


@pytest.mark.parametrize("case", matrix.cases(
    backend_storage=FILE_STORAGES, fmt=["raw", "qcow2"], interface=["drive"],
    variant=["classic", "classic_ro"]))
def test_classic_drive(case, targets, qemu, qemu_build, qemu_caps, qb_evidence):
    """``-drive file=X,format=F,if=none`` as users write it: no node names, defaults."""
    target = targets.target("file", case.storage, case.fmt)
    ro = case.variant == "classic_ro"
    arg = f"file={drive.qemu_opt_escape(str(target.fd_path))},format={case.fmt},if=none,id=d0"
    if ro:
        arg += ",read-only=on"
    qb_evidence.note(case=case.describe(), drive=arg)
    exp = defaults.expect_classic_drive(case.fmt, target.readonly, ro,
                                        observe_error(target), qemu_caps)
    try:
        vm = qemu.start("-drive", arg, wrapper=target.wrapper)
    except LaunchError as e:
        obs = drive.launch_failed(e)
    else:
        # the drive has no node name: its ro is query-block's, keyed by the drive id
        obs = outcome.Outcome(True, vm=vm, fds={outcome.IMAGE: procfs.fd_modes(vm.pid, target.fd_path)})
        obs.ro = {b["device"]: bool(b["inserted"]["ro"]) for b in vm.execute("query-block")
                  if "inserted" in b}
    outcome.check(exp, obs, what=f"-drive {arg} ({case.id})", build=qemu_build.name)


def observe_error(target):
    from pytest_qemublock.expectations import open_failed

    return open_failed(target) if target.readonly else None


@pytest.mark.parametrize("case", matrix.cases(
    backend_storage=FILE_STORAGES, fmt=["chain"], interface=["blockdev", "drive"]))
def test_backing_children_open_read_only(case, targets, qemu, qemu_build, qb_evidence):
    """Backing files found through the image header open read-only, whatever the top does."""
    st = targets.storage(case.storage)
    from pytest_qemublock.storage.images import ImageFactory

    top = ImageFactory(targets.tools, st.directory).from_recipe("chain")
    if case.storage != "rw":
        st.make_readonly()
    path = str(st.qemu_path(top.path))
    # The top is read-write where the storage allows it, read-only elsewhere.
    top_ro = case.storage != "rw"
    if case.interface == "blockdev":
        opts = {"driver": "qcow2", "node-name": "top", "read-only": top_ro,
                "file": {"driver": "file", "node-name": "top-file", "filename": path}}
        vm = qemu.start("-blockdev", json.dumps(opts), wrapper=st.wrapper)
    else:
        arg = f"file={drive.qemu_opt_escape(path)},format=qcow2,if=none,id=d0,node-name=top"
        arg += ",read-only=on" if top_ro else ""
        vm = qemu.start("-drive", arg, wrapper=st.wrapper)
    qb_evidence.note(case=case.describe())
    nodes = vm.nodes()
    chain = []
    name = "top"
    while name:
        node = nodes[name]
        chain.append(node)
        backing = node["image"].get("backing-image")
        name = next((n for n, v in nodes.items() if backing and v["drv"] == "qcow2"
                     and v["image"]["filename"] == backing["filename"] and v is not node), None)
    assert len(chain) == 3, (
        f"{case.id}: expected a 3-layer chain, QEMU opened {[n['node-name'] for n in chain]}")
    assert chain[0]["ro"] is top_ro, f"{case.id}: top ro={chain[0]['ro']}, expected {top_ro}"
    for layer, img in zip(chain[1:], top.chain()[1:], strict=False):
        assert layer["ro"] is True, (
            f"{case.id} [build {qemu_build.name}]: backing node {layer['node-name']} ({img.path.name}) "
            f"has ro={layer['ro']}, expected True (COW children default to read-only=on)")
        modes = procfs.fd_modes(vm.pid, st.qemu_path(img.path))
        assert modes == [O_RDONLY], (
            f"{case.id} [build {qemu_build.name}]: backing {img.path.name} fd modes {modes}, "
            "expected [O_RDONLY]")
    top_modes = procfs.fd_modes(vm.pid, path)
    want = O_RDONLY if top_ro else O_RDWR
    assert top_modes == [want], f"{case.id}: top fd modes {top_modes}, expected [{want}]"


@pytest.mark.parametrize("tool", defaults.TOOL_CASES, ids=lambda t: t.name)
@pytest.mark.parametrize("case", matrix.cases(backend_storage=RO_STORAGES))
def test_tools_on_read_only_storage(case, tool, targets, qemu_build, qemu_tools, qb_evidence):
    """qemu-img / qemu-io on read-only storage: reads work, writes fail with the storage's error."""
    if not qemu_build.has(tool.role):
        pytest.skip(f"build {qemu_build.name} has no qemu-{tool.role}")
    raw = targets.target("file", case.storage, "raw")
    qcow2 = targets.target("file", case.storage, "qcow2")
    p, q = str(raw.fd_path), str(qcow2.fd_path)
    args = [a.replace("{p}", p).replace("{q}", q) for a in tool.args]
    qb_evidence.note(case=case.describe(), tool=tool.name)
    res = qemu_tools.run(tool.role, *args, check=False, prefix=raw.wrapper.prefix)
    output = (res.stdout + res.stderr).strip()
    what = f"qemu-{tool.role} {' '.join(args)} on {case.id} [build {qemu_build.name}]"
    if tool.ok:
        assert res.returncode == 0, (
            f"{what}: expected success ({tool.because}), got exit {res.returncode}: {output}")
    else:
        assert res.returncode != 0, f"{what}: expected a refusal ({tool.because}), but it succeeded: {output}"
        err = defaults.tool_error(tool, p, q, case.storage)
        message = outcome.tool_message(output, f"qemu-{tool.role}")
        assert re.fullmatch(err, message), (
            f"{what}: error message does not match /{err}/ ({tool.because}):\n{message}")
    assert raw.image.unchanged() and qcow2.image.unchanged(), f"{what}: read-only storage was written"


@pytest.mark.parametrize("case", matrix.cases(backend_storage=RO_STORAGES, variant=["qemu-nbd", "qsd"]))
def test_servers_on_read_only_storage(case, targets, qemu, qemu_build, qemu_caps, qb_evidence):
    """A read-only export of read-only storage serves; a writable one is refused at start."""
    target = targets.target("file", case.storage, "raw")
    start = nbd.start_qemu_nbd if case.variant == "qemu-nbd" else nbd.start_qsd_export
    role = "nbd" if case.variant == "qemu-nbd" else "qsd"
    if not qemu_build.has(role):
        pytest.skip(f"build {qemu_build.name} has no {case.variant}")
    # An unprivileged server cannot create sockets in the private socket dir,
    # but it inherits the pre-bound one; the eacces wrapper applies to it too.
    server = start(targets.server_ctx, target.fd_path, readonly=True, wrapper=target.wrapper)
    targets.servers.append(server)
    vm = qemu.start("-blockdev", json.dumps({**server.blockdev_options(), "node-name": "c0",
                                             "read-only": True}))
    assert vm.node_ro("c0") is True
    pattern = target.image.patterns[0]
    read = drive.hmp_qemu_io(vm, "c0", f"read {pattern.io_args()}")
    assert read.pattern_ok, (f"{case.id} [build {qemu_build.name}]: reading {pattern.io_args()} through the "
                             f"read-only export failed: {read.describe()}")
    with _refused() as refused:
        start(targets.server_ctx, target.fd_path, readonly=False, wrapper=target.wrapper)
    msg = refused.message
    assert ("Could not open" in msg and defaults.STRERROR[case.storage] in msg), (
        f"{case.id} [build {qemu_build.name}]: a writable {case.variant} export of read-only storage "
        f"should fail with \"Could not open '...': {defaults.STRERROR[case.storage]}\", got: {msg}")
    assert target.image.unchanged()


class _refused:
    """Context manager: the body must raise ServerError; keeps its message."""

    def __enter__(self):
        self.message = ""
        return self

    def __exit__(self, et, ev, tb):
        from pytest_qemublock.backends.server import ServerError

        if et is None:
            raise AssertionError("the server started, but was expected to refuse")
        if issubclass(et, ServerError):
            self.message = str(ev)
            return True
        return False


EXPORTS = {e.id: e for e in defaults.EXPORT_DEFAULTS}


@pytest.mark.parametrize("case", matrix.cases(backend_storage=[("file", "rw")], fmt=["raw"],
                                              variant=list(EXPORTS)))
def test_export_writable_default(case, targets, qemu, qemu_build, qemu_caps, qemu_tools, qb_evidence):
    """A read-write node exported with the writability option left out, or given: may clients
    write (the server leaves NBD_FLAG_READ_ONLY off)? The flags a client sees (qemu-nbd -L) and
    what a second process gets when it opens the export read-write and read-only."""
    exp = EXPORTS[case.variant]
    target = targets.target("file", "rw", "raw")
    qb_evidence.note(case=case.describe())
    if exp.interface in ("qemu-nbd", "qsd"):
        role = "nbd" if exp.interface == "qemu-nbd" else "qsd"
        if not qemu_build.has(role):
            pytest.skip(f"build {qemu_build.name} has no {exp.interface}")
        if exp.interface == "qemu-nbd":
            server = nbd.start_qemu_nbd(targets.server_ctx, target.fd_path, readonly=exp.writable is False)
        else:
            server = nbd.start_qsd_export(targets.server_ctx, target.fd_path, readonly=False,
                                          writable={None: None, True: "on", False: "off"}[exp.writable])
        targets.servers.append(server)
        view = exports.client_view(qemu_tools, server.listener.path)
    else:
        if not qemu_caps.has_command(exp.interface):
            pytest.skip(f"build {qemu_build.name} has no QMP command {exp.interface}")
        vm = qemu.start("-blockdev", json.dumps({"driver": "raw", "node-name": "n0",
                                                 "file": target.node("f0")}))
        view = exports.qmp_export(vm, exp.interface, exp.writable, targets.server_ctx.sockdir, qemu_tools)
        assert isinstance(view, exports.ClientView), (
            f"{case.id} [build {qemu_build.name}]: {exp.interface} of a read-write node refused: {view}")
    assert view.writable is exp.expect_writable, (
        f"{case.id} [build {qemu_build.name}]: export {'writable' if view.writable else 'read-only'} "
        f"({view.flags}), expected {'writable' if exp.expect_writable else 'read-only'}\n"
        f"  because:  {exp.because}")
    servers = nbd.MAX_CONNECTIONS if exp.interface in ("qemu-nbd", "qsd") else None
    problems = view.mismatches(defaults.export_flags(view.writable, servers),
                               defaults.client_others(view.writable, view.url))
    assert not problems, (f"{case.id} [build {qemu_build.name}]: a client of the "
                          f"{'writable' if view.writable else 'read-only'} export {view.url}: "
                          + "; ".join(problems) + f"\n  because:  {defaults.EXPORT_FLAGS_RULE}")


def _child_images(targets, qemu_tools, role):
    """On writable storage, the images *role* needs: a qcow2 with a qcow2 backing file (file,
    backing), or a qcow2 with an external raw data file (data-file; qemu-img creates both)."""
    st = targets.storage("rw")
    d = st.directory
    if role == "data-file":
        qemu_tools.img("create", "-f", "qcow2", "-o", f"data_file={d / 'data.raw'},data_file_raw=on",
                       d / "dq.qcow2", "1M")
    else:
        qemu_tools.img("create", "-f", "qcow2", d / "bk.qcow2", "1M")
        qemu_tools.img("create", "-f", "qcow2", "-b", "bk.qcow2", "-F", "qcow2", d / "top.qcow2")
    return st


def _child_node_options(role, st, parent_ro, child_ro):
    d = st.directory
    child = {} if child_ro is None else {"read-only": child_ro}
    if role == "file":
        return {"driver": "qcow2", "node-name": "n0", "read-only": parent_ro,
                "file": {"driver": "file", "node-name": "c0", "filename": str(d / "top.qcow2"), **child},
                "backing": None}
    if role == "backing":
        return {"driver": "qcow2", "node-name": "n0", "read-only": parent_ro,
                "file": {"driver": "file", "filename": str(d / "top.qcow2")},
                "backing": {"driver": "qcow2", "node-name": "c0", "backing": None,
                            "file": {"driver": "file", "filename": str(d / "bk.qcow2")}, **child}}
    return {"driver": "qcow2", "node-name": "n0", "read-only": parent_ro,
            "file": {"driver": "file", "filename": str(d / "dq.qcow2")},
            "data-file": {"driver": "file", "node-name": "c0", "filename": str(d / "data.raw"), **child}}


@pytest.mark.parametrize("case", matrix.cases(
    backend_storage=[("file", "rw")], fmt=["qcow2"], interface=["qmp", "drive"], ro=[True, False],
    aro=[None], variant=[f"{role}-{opt}" for role in defaults.CHILD_ROLES
                         for opt in ("ro_omitted", "ro_on", "ro_off")]))
def test_child_read_only_default(case, targets, qemu, qemu_build, qemu_tools, qb_evidence):
    """qcow2 n0 with its file, backing or data-file child c0 given inline (blockdev-add, or
    -drive with dotted options), c0's read-only left out or given: does c0 open read-only?"""
    role, opt = case.variant.rsplit("-", 1)
    child_ro = {"ro_omitted": None, "ro_on": True, "ro_off": False}[opt]
    st = _child_images(targets, qemu_tools, role)
    opts = _child_node_options(role, st, case.ro, child_ro)
    qb_evidence.note(case=case.describe(), options=opts)
    exp = defaults.expect_child_read_only(role, case.ro, child_ro)
    if case.interface == "qmp":
        vm = qemu.start()
        err = vm.execute_error("blockdev-add", opts)
        got = drive.qmp_failed(err, vm) if err is not None else drive.state(vm, ("n0", "c0"), {})
        what = f"blockdev-add {json.dumps(opts)} ({case.id})"
    else:
        # -drive has no null: the header's backing file opens instead (read-only, unnamed),
        # which changes nothing for n0 and c0
        arg = drive.drive_arg(_without_null(opts))
        what = f"-drive {arg} ({case.id})"
        try:
            got = drive.state(qemu.start("-drive", arg), ("n0", "c0"), {})
        except LaunchError as e:
            got = drive.launch_failed(e)
    outcome.check(exp, got, what=what, build=qemu_build.name)


def _without_null(opts):
    return {k: _without_null(v) if isinstance(v, dict) else v for k, v in opts.items() if v is not None}


def _aro_child_options(role, st, parent_aro, child_aro):
    """qcow2 n0 (read-only=on) whose *role* child is the file node c0 (read-only=off), and the
    image paths as QEMU sees them: {label: path} of n0's own image and of c0's."""
    d = st.directory
    child = {"read-only": False} if child_aro is None else {"read-only": False, "auto-read-only": child_aro}
    image = {"file": "top.qcow2", "backing": "ov.qcow2", "data-file": "dq.qcow2"}[role]
    c0_image = {"file": "top.qcow2", "backing": "bk.raw", "data-file": "data.raw"}[role]
    c0 = {"driver": "file", "node-name": "c0", "filename": str(st.qemu_path(d / c0_image)), **child}
    opts = {"driver": "qcow2", "node-name": "n0", "read-only": True}
    if parent_aro is not None:
        opts["auto-read-only"] = parent_aro
    if role == "file":
        opts["file"] = c0
    else:
        opts["file"] = {"driver": "file", "filename": str(st.qemu_path(d / image))}
        opts[role] = c0
    return opts, {"child": st.qemu_path(d / c0_image)}


# The parent's own auto-read-only left out with the child's left out, on and off; the parent's
# given (against the interface's default) with the child's left out: what it inherits.
ARO_OMITTED = [v for v in defaults.CHILD_ARO_VARIANTS if v.endswith("omitted")]


@pytest.mark.parametrize("case", [
    *matrix.cases(backend_storage=[("file", "erofs")], fmt=["qcow2"], interface=["qmp", "drive"], ro=[True],
                  aro=[None], variant=defaults.CHILD_ARO_VARIANTS),
    *matrix.cases(backend_storage=[("file", "erofs")], fmt=["qcow2"], interface=["qmp"], ro=[True],
                  aro=[True], variant=ARO_OMITTED),
    *matrix.cases(backend_storage=[("file", "erofs")], fmt=["qcow2"], interface=["drive"], ro=[True],
                  aro=[False], variant=ARO_OMITTED)])
def test_child_auto_read_only_default(case, targets, qemu, qemu_build, qemu_caps, qemu_tools, qb_evidence):
    """A read-only qcow2 n0 on read-only storage whose file, backing or data-file child c0 is a
    file node with read-only=off: c0 opens (dynamic, O_RDONLY) only if the auto-read-only it ends
    up with is on; left out, it inherits n0's (file, data-file) or is off (backing)."""
    role, opt = case.variant.rsplit("-", 1)
    child_aro = {"aro_omitted": None, "aro_on": True, "aro_off": False}[opt]
    st = targets.storage("erofs")
    d = st.directory
    # one qemu-img per case (a process costs more than the case's QEMU); the backing image has
    # no backing file in its header: the backing child is only the one given inline
    if role == "data-file":
        qemu_tools.img("create", "-f", "qcow2", "-o", f"data_file={d / 'data.raw'},data_file_raw=on",
                       d / "dq.qcow2", "1M")
    else:
        qemu_tools.img("create", "-f", "qcow2", d / ("top.qcow2" if role == "file" else "ov.qcow2"), "1M")
    if role == "backing":
        with open(d / "bk.raw", "wb") as f:
            f.truncate(1 << 20)
    opts, images = _aro_child_options(role, st, case.aro, child_aro)
    refused = rf"Could not open '{re.escape(str(images['child']))}': {re.escape(st.error_text)}"
    exp = defaults.expect_child_auto_read_only(role, case.interface, case.aro, child_aro, refused, qemu_caps)
    if case.interface == "qmp":
        what = f"blockdev-add {json.dumps(opts)} ({case.id})"
        vm = qemu.start(wrapper=st.wrapper)
        err = vm.execute_error("blockdev-add", opts)
        got = drive.qmp_failed(err, vm) if err is not None else drive.state(vm, ("n0", "c0"), images)
    else:
        arg = drive.drive_arg(opts)
        what = f"-drive {arg} ({case.id})"
        try:
            vm = qemu.start("-drive", arg, wrapper=st.wrapper)
        except LaunchError as e:
            got = drive.launch_failed(e)
        else:
            got = drive.state(vm, ("n0", "c0"), images)
    qb_evidence.note(case=case.describe(), options=opts)
    outcome.check(exp, got, what=what, build=qemu_build.name)
