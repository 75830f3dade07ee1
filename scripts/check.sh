#!/usr/bin/env bash
# Static checks: ruff (lint, configured in pyproject.toml [tool.ruff]) and
# mypy --strict on the package ([tool.mypy]). Exit status non-zero on any finding.
#
#   bash scripts/check.sh        needs .venv with the dev extra (bash scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
echo "== ruff" >&2
.venv/bin/ruff check pytest_qemublock suites tests bench scripts || status=1
echo "== mypy --strict" >&2
.venv/bin/mypy --strict pytest_qemublock || status=1
exit $status
