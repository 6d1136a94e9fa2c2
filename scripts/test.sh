#!/usr/bin/env bash
# The whole test suite, as the README gives it and CI runs it:
# setup (libraries, test data, PostgreSQL), the lints (rustfmt, clippy with warnings as
# errors), every test on both database backends, the schema fuzz of the OpenAPI
# document against a controller on PostgreSQL (scripts/fuzz.sh), then the README's
# first command (`cargo run -p lastmile-demo`) as a user
# types it, so the front door cannot break without a red run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "==> cargo fmt --all --check"
cargo fmt --all --check
echo "==> cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
cargo nextest run --workspace --no-fail-fast "$@"
echo "==> schema fuzz: scripts/fuzz.sh"
bash scripts/fuzz.sh
echo "==> README smoke: cargo run -p lastmile-demo -- --runs 1"
smoke_out="$(mktemp -d)"
trap 'rm -rf "$smoke_out"' EXIT
cargo run --quiet -p lastmile-demo -- --runs 1 --out "$smoke_out"
test -s "$smoke_out/report.json"
test -s "$smoke_out/ledger.json"
test -s "$smoke_out/leaderboard.json"
