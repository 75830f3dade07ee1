"""Backends: how a suite gets a protocol node on writable or read-only storage.

A backend turns (image recipe, storage kind) into a :class:`Target`: the
protocol-node options QEMU should use, the wrapper to launch QEMU with, and
whatever servers that needs. Suites only talk to targets, so a new protocol
is one more :class:`Backend` (its own module, with its server) and no suite
changes. What the backend's QEMU driver does with read-only storage is in
:mod:`.drivers`; the backends a run knows are in :mod:`.registry`.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..host.namespace import NamespaceError
from ..qemu.build import QemuBuild
from ..qemu.capabilities import Capabilities
from ..qemu.instance import Wrapper
from ..storage.images import Image, ImageFactory, Tools
from ..storage.local import Storage
from .server import Server, ServerContext, ServerError

#: storage kinds: "rw" is writable; every other kind refuses writes
READONLY_KINDS = ("ro", "erofs", "eacces")


@dataclass
class Target:
    """A protocol node a suite can open, and how to observe it."""

    backend: str
    storage: str
    driver: str
    image: Image
    options: dict[str, Any]
    wrapper: Wrapper = field(default_factory=Wrapper)
    fd_path: Path | None = None  # the file QEMU opens (file backend), for fdinfo
    error_text: str | None = None  # strerror of a refused read-write open (file backend)
    server: Server | None = None
    storage_obj: Storage | None = None
    drive_file: str | None = None  # ``-drive file=`` value (a URI), if the protocol has one

    @property
    def readonly(self) -> bool:
        return self.storage in READONLY_KINDS

    def node(self, node_name: str, **extra: Any) -> dict[str, Any]:
        """Options of the protocol node named *node_name* (extra keys such as read-only)."""
        return {**self.options, "node-name": node_name, **extra}

    def make_writable(self) -> None:
        """Let the storage accept writes from now on (file backends only)."""
        if self.storage_obj is None or self.storage == "rw":
            raise NotImplementedError(f"{self.backend}-{self.storage} cannot be flipped")
        self.storage_obj.make_writable()

    def make_readonly(self) -> None:
        if self.storage_obj is None or self.storage == "rw":
            raise NotImplementedError(f"{self.backend}-{self.storage} cannot be flipped")
        self.storage_obj.make_readonly()

    def describe(self) -> str:
        return f"{self.backend}-{self.storage}"


class ProvideContext(Protocol):
    """What :meth:`Backend.provide` may use of the test's provisioner
    (:class:`~.provisioner.Provisioner`; a protocol, so backends need not import it)."""

    build: QemuBuild
    accel: str
    tools: Tools
    server_ctx: ServerContext
    caps: Capabilities
    servers: list[Server]

    def storage(self, kind: str) -> Storage: ...


class Backend:
    """Base class: subclasses set the class attributes and implement :meth:`provide`.

    ``driver`` names the QEMU protocol driver; a driver listed in
    :data:`.drivers.DRIVERS` is skipped where its loadable module does not load.
    """

    name = ""
    driver = ""
    storages: tuple[str, ...] = ()
    #: its server listens on 127.0.0.1: only safe inside the run's sandbox
    #: (host/sandbox.py), where no other user of the machine can connect
    listens_on_tcp = False

    def unavailable(self, build: QemuBuild, storage: str) -> str | None:
        """Why this backend cannot run here (a skip reason that says what to install)."""
        return None

    def provide(self, ctx: ProvideContext, recipe: str, storage: str) -> Target:
        raise NotImplementedError

    def describe(self) -> str:
        """Where it comes from, for messages about clashing names."""
        return f"{type(self).__module__}.{type(self).__qualname__}"


def new_image(ctx: ProvideContext, recipe: str) -> Image:
    """*recipe* created on the test's writable storage (what every server exports)."""
    return ImageFactory(ctx.tools, ctx.storage("rw").directory).from_recipe(recipe)


S = TypeVar("S", bound=Server)


def started(ctx: ProvideContext, name: str, start: Callable[[], S]) -> S:
    """Start a server for backend *name*, owned by *ctx* (stopped with the test).

    A server that does not come up fails the case: the host said it could run it.
    """
    try:
        server = start()
    except (ServerError, NamespaceError) as e:
        raise AssertionError(f"{name}: server did not start: {e}") from None
    ctx.servers.append(server)
    return server


def needs_root(what: str) -> str | None:
    if os.geteuid() != 0:
        return (f"{what} needs root: its server is started only by root, in a private mount "
                "namespace with a tmpfs on /run (no user namespace)")
    return None
