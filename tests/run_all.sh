#!/usr/bin/env bash
# The whole test suite: formatting and lints (each skipped, with a notice, where the tool is not
# installed), the Rust engine's unit tests, then the Python package's tests (reinstalling the
# package first, so the Python tests see the current Rust code), then the
# numerics files again on the baseline kernels (EXACTEM_SIMD=baseline: no fused multiply-add),
# so that a result or tolerance that holds only on this processor's kernels fails here too.
# (The Rust tests run their kernel-dependent checks on every kernel the processor has.)
set -euo pipefail
cd "$(dirname "$0")/.."
# Formatting (rustfmt.toml) and lints (Cargo.toml [lints]), where the tools are installed.
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --check
else
    echo "run_all.sh: rustfmt not installed; skipping cargo fmt --check"
fi
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --release --all-targets --features python -- -D warnings
else
    echo "run_all.sh: clippy not installed; skipping cargo clippy"
fi
cargo test --release
python -m pip install --quiet ".[test]"
python -m pytest tests "$@"
EXACTEM_SIMD=baseline python -m pytest tests/test_gauss.py tests/test_inference.py tests/test_inference_multidim.py "$@"
