#!/usr/bin/env bash
# The whole test suite: the Rust engine's unit tests, then the Python package's tests
# (reinstalling the package first, so the Python tests see the current Rust code).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release
python -m pip install --quiet ".[test]"
python -m pytest tests "$@"
