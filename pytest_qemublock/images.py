"""Test images: created with qemu-img, filled and verified with qemu-io.

Every image records the checksum of its file right after creation, so a test
on read-only storage can prove afterwards that not one byte was written.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import QemuBuild
from .evidence import TestEvidence
from .machine import Timeouts
from .process import format_argv, run

RECIPES = Path(__file__).resolve().parent.parent / "images" / "recipes.toml"


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
    backing: "Image | None" = None
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

    def chain(self) -> list["Image"]:
        """This image and its backing files, top first."""
        out, img = [], self
        while img is not None:
            out.append(img)
            img = img.backing
        return out


class Tools:
    """qemu-img / qemu-io of one build, logged into the test's evidence."""

    def __init__(self, build: QemuBuild, evidence: TestEvidence, timeouts: Timeouts) -> None:
        self.build = build
        self.evidence = evidence
        self.timeouts = timeouts

    def run(self, role: str, *args: str | Path, check: bool = True,
            prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        argv = [*prefix, str(self.build.path(role)), *map(str, args)]
        res = run(argv, timeout=self.timeouts.tool, env=self.build.env)
        with open(self.evidence.log_dir / "tools.log", "a", encoding="utf-8") as f:
            f.write(f"$ {format_argv(argv)}\n-> exit {res.returncode}\n{res.stdout}{res.stderr}\n")
        if check and res.returncode != 0:
            raise AssertionError(
                f"{format_argv(argv)} failed (exit {res.returncode}) with build "
                f"{self.build.name}:\n{res.stderr.strip() or res.stdout.strip()}")
        return res

    def img(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("img", *args, check=check)

    def io(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("io", *args, check=check)

    def info(self, path: Path) -> dict[str, Any]:
        return json.loads(self.img("info", "--output=json", "-U", path).stdout)


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
        """Create the image described by ``images/recipes.toml`` [*recipe*].

        For a layered recipe, returns the top image (its ``backing`` chain
        holds the rest).
        """
        r = load_recipes()[recipe]
        fmt, size = r["format"], r["size"]
        base = name or recipe
        if "layers" not in r:
            return self.create(f"{base}.{_ext(fmt)}", fmt, size, patterns=_patterns(r))
        img: Image | None = None
        for layer in r["layers"]:
            img = self.create(f"{base}-{layer['name']}.{_ext(fmt)}", fmt, size, backing=img,
                              patterns=_patterns(layer))
        assert img is not None
        return img

    def verify(self, img: Image, pattern: Pattern, fmt: str | None = None) -> bool:
        """Read *pattern* back with ``qemu-io -r``: True if every byte matches."""
        res = self.tools.io("-r", "-U", "-f", fmt or img.fmt, "-c",
                            f"read {pattern.io_args()}", img.path, check=False)
        return res.returncode == 0 and "Pattern verification failed" not in res.stdout + res.stderr


def load_recipes(path: Path = RECIPES) -> dict[str, Any]:
    with open(path, "rb") as f:
        return tomllib.load(f)


def _patterns(spec: dict[str, Any]) -> list[Pattern]:
    return [Pattern(int(p["byte"]), str(p["offset"]), str(p["length"])) for p in spec.get("patterns", [])]


def _ext(fmt: str) -> str:
    return {"raw": "img"}.get(fmt, fmt)
