"""The file backend: QEMU's file-posix driver on local storage, writable (``rw``),
on a read-only erofs mount (``erofs``) or unreachable for writes by permissions (``eacces``)."""
from __future__ import annotations

from ..qemu.build import QemuBuild
from ..storage.images import ImageFactory
from ..storage.local import unavailable_reason, unprivileged_cannot_reach
from .base import Backend, ProvideContext, Target


class FileBackend(Backend):
    name = "file"
    driver = "file"
    storages = ("rw", "erofs", "eacces")

    def unavailable(self, build: QemuBuild, storage: str) -> str | None:
        reason = unavailable_reason(storage)
        if reason is None and storage == "eacces":
            reason = unprivileged_cannot_reach(build.path("system"), executable=True)
        return reason

    def provide(self, ctx: ProvideContext, recipe: str, storage: str) -> Target:
        st = ctx.storage(storage)
        img = ImageFactory(ctx.tools, st.directory).from_recipe(recipe)
        if storage != "rw":
            st.make_readonly()  # eacces: chmod the files just created
        path = st.qemu_path(img.path)
        return Target(self.name, storage, "file", img, {"driver": "file", "filename": str(path)},
                      wrapper=st.wrapper, fd_path=path, error_text=st.error_text, storage_obj=st,
                      drive_file=str(path))
