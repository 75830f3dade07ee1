"""The reporting layer: one outcome per case, the end-of-run matrix, the JSON results
and ``qemublock-diff``."""
