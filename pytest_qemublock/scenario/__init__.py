"""The scenario layer: the case matrix, the outcome model (what was expected, what
QEMU did, known bugs), and the drivers that make QEMU open, reopen and attach users."""
