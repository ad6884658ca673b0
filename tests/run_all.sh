#!/usr/bin/env bash
# The whole test suite: the Rust engine's unit tests, then the Python package's tests
# (reinstalling the package first, so the Python tests see the current Rust code), then the
# numerics files again on the baseline kernels (EXACTEM_SIMD=baseline: no fused multiply-add),
# so that a result or tolerance that holds only on this processor's kernels fails here too.
# (The Rust tests run their kernel-dependent checks on every kernel the processor has.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release
python -m pip install --quiet ".[test]"
python -m pytest tests "$@"
EXACTEM_SIMD=baseline python -m pytest tests/test_gauss.py tests/test_inference.py tests/test_inference_multidim.py "$@"
