"""The storage layer: images made from recipes, and local storage that accepts or
refuses writes (rw, a read-only bind mount, a file QEMU may not write)."""
