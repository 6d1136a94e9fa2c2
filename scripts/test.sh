#!/usr/bin/env bash
# The whole test suite, as the README gives it and CI runs it:
# setup (libraries, test data, PostgreSQL), then every test on both database backends.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo nextest run --workspace --no-fail-fast "$@"
