#!/usr/bin/env bash
# The whole test suite, as the README gives it and CI runs it:
# setup (libraries, test data, PostgreSQL), then every test on both database backends,
# then the README's first command (`cargo run -p lastmile-controller -- demo`) as a user
# types it, so the front door cannot break without a red run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo nextest run --workspace --no-fail-fast "$@"
echo "==> README smoke: cargo run -p lastmile-controller -- demo --runs 1"
smoke_out="$(mktemp -d)"
trap 'rm -rf "$smoke_out"' EXIT
cargo run --quiet -p lastmile-controller -- demo --runs 1 --out "$smoke_out"
test -s "$smoke_out/report.json"
test -s "$smoke_out/ledger.json"
test -s "$smoke_out/leaderboard.json"
