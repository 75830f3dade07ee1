"""Test images: created with qemu-img, filled and verified with qemu-io.

Every image records the checksum of its file right after creation, so a test
on read-only storage can prove afterwards that not one byte was written.
"""
from __future__ import annotations

import hashlib
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..qemu.tools import QemuIoResult, Tools

__all__ = ["Image", "ImageFactory", "Pattern", "QemuIoResult", "Tools", "load_recipes"]

#: package data, so that a wheel install can create images too
RECIPES = Path(__file__).resolve().parent / "recipes.toml"


@dataclass(frozen=True)
class Pattern:
    byte: int
    offset: str
    length: str

    def io_args(self) -> str:
        return f"-P 0x{self.byte:02x} {self.offset} {self.length}"


@dataclass
class Image:
    """An image file and what was written to it."""

    path: Path
    fmt: str
    size: str
    backing: Image | None = None
    patterns: list[Pattern] = field(default_factory=list)
    created_sha256: str = ""

    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def unchanged(self) -> bool:
        """True if the file is bit-identical to how it was created."""
        return self.sha256() == self.created_sha256

    def chain(self) -> list[Image]:
        """This image and its backing files, top first."""
        out: list[Image] = []
        img: Image | None = self
        while img is not None:
            out.append(img)
            img = img.backing
        return out


class ImageFactory:
    """Creates images in one directory (normally a storage provider's)."""

    def __init__(self, tools: Tools, directory: Path) -> None:
        self.tools = tools
        self.directory = directory

    def create(self, name: str, fmt: str = "raw", size: str = "1M", *,
               backing: Image | None = None,
               patterns: list[Pattern] | None = None) -> Image:
        """Create *name* (no extension added) and write *patterns* into it."""
        path = self.directory / name
        args: list[str | Path] = ["create", "-q", "-f", fmt]
        if backing is not None:
            # Relative when possible: the chain then resolves through whichever
            # view QEMU opens the top with (e.g. the read-only bind mount).
            rel = backing.path.name if backing.path.parent == path.parent else backing.path
            args += ["-b", rel, "-F", backing.fmt]
        args += [path, size]
        self.tools.img(*args)
        img = Image(path, fmt, size, backing, list(patterns or []))
        for p in img.patterns:
            self.tools.io("-f", fmt, "-c", f"write {p.io_args()}", path)
        img.created_sha256 = img.sha256()
        return img

    def from_recipe(self, recipe: str, name: str | None = None) -> Image:
        """Create the image described by ``storage/recipes.toml`` [*recipe*].

        For a layered recipe, returns the top image (its ``backing`` chain
        holds the rest).
        """
        base = name or recipe
        template_dir = self.tools.template_dir
        if template_dir is not None:
            return self._copy_template(recipe, base, template_dir / recipe)
        return self._build_recipe(recipe, base)

    def _build_recipe(self, recipe: str, base: str) -> Image:
        r = load_recipes()[recipe]
        fmt, size = r["format"], r["size"]
        if "layers" not in r:
            return self.create(f"{base}.{_ext(fmt)}", fmt, size, patterns=_patterns(r))
        img: Image | None = None
        for layer in r["layers"]:
            img = self.create(f"{base}-{layer['name']}.{_ext(fmt)}", fmt, size, backing=img,
                              patterns=_patterns(layer))
        assert img is not None
        return img

    def _copy_template(self, recipe: str, base: str, tdir: Path) -> Image:
        # Building a recipe costs a qemu-img and a qemu-io run per layer; a
        # copy of the session's first build of it costs well under 1 ms.
        if not (tdir / ".complete").exists():
            tdir.mkdir(parents=True, exist_ok=True)
            plain = Tools(self.tools.ctx)
            plain.replayed = False  # a session's template: the replay makes each copy instead
            ImageFactory(plain, tdir)._build_recipe(recipe, recipe)
            (tdir / ".complete").touch()
        template = ImageFactory(self.tools, tdir)._describe(recipe, recipe)
        copies: dict[Path, Image] = {}
        for layer in reversed(template.chain()):
            dest = self.directory / (base + layer.path.name[len(recipe):])
            shutil.copyfile(layer.path, dest)
            copies[layer.path] = img = Image(dest, layer.fmt, layer.size,
                                             copies.get(layer.backing.path) if layer.backing else None,
                                             list(layer.patterns))
            img.created_sha256 = img.sha256()
            self._journal_copy(img)
        if template.backing is not None and base != recipe:
            # The relative backing names in the headers are the template's; rename them.
            for img in copies.values():
                if img.backing is not None:
                    self.tools.img("rebase", "-u", "-f", img.fmt, "-b", img.backing.path.name,
                                   "-F", img.backing.fmt, img.path)
                    img.created_sha256 = img.sha256()
        return copies[template.path]

    def _journal_copy(self, img: Image) -> None:
        """The qemu-img / qemu-io commands that make *img* as its template was made."""
        args: list[str] = ["create", "-q", "-f", img.fmt]
        if img.backing is not None:
            args += ["-b", img.backing.path.name, "-F", img.backing.fmt]
        commands = [[str(self.tools.build.path("img")), *args, str(img.path), img.size]]
        commands += [[str(self.tools.build.path("io")), "-f", img.fmt, "-c", f"write {p.io_args()}",
                      str(img.path)] for p in img.patterns]
        for argv in commands:
            self.tools.evidence.journal.add("tool", argv=argv, rc=0, stderr="", made="from a template")

    def _describe(self, recipe: str, base: str) -> Image:
        """The Image objects of a recipe already built under *base* (no qemu-img runs)."""
        r = load_recipes()[recipe]
        fmt, size = r["format"], r["size"]
        if "layers" not in r:
            return Image(self.directory / f"{base}.{_ext(fmt)}", fmt, size, None, _patterns(r))
        img: Image | None = None
        for layer in r["layers"]:
            img = Image(self.directory / f"{base}-{layer['name']}.{_ext(fmt)}", fmt, size, img,
                        _patterns(layer))
        assert img is not None
        return img

    def verify(self, img: Image, pattern: Pattern, fmt: str | None = None) -> bool:
        """Read *pattern* back with ``qemu-io -r``: True if every byte matches."""
        return self.read(img, pattern, fmt).pattern_ok

    def read(self, img: Image, pattern: Pattern, fmt: str | None = None) -> QemuIoResult:
        """``qemu-io -r -U`` *pattern* from *img* (through its on-disk backing chain)."""
        return self.tools.io_command(f"read {pattern.io_args()}", "-r", "-U", "-f", fmt or img.fmt, img.path)


def load_recipes(path: Path = RECIPES) -> dict[str, Any]:
    with open(path, "rb") as f:
        return tomllib.load(f)


def _patterns(spec: dict[str, Any]) -> list[Pattern]:
    return [Pattern(int(p["byte"]), str(p["offset"]), str(p["length"])) for p in spec.get("patterns", [])]


def _ext(fmt: str) -> str:
    return {"raw": "img"}.get(fmt, fmt)
