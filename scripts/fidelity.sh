#!/usr/bin/env bash
# The fidelity benchmark as the closing notes quote it: builds tools/curl-rustls (libcurl
# on rustls, outside the workspace because it compiles libcurl and aws-lc from C: a few
# minutes the first time) so HTTPS is judged against the agent's own TLS library, then
# runs `lastmile-agent measure` against curl on local targets and prints the table.
# FIDELITY_RUNS=N sets the alternating runs per target (default 21). Run it on a quiet
# machine: the figures are medians, but a build beside them still moves sub-ms phases.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v curl >/dev/null || { echo "fidelity: curl is needed" >&2; exit 2; }
cargo build --release --manifest-path tools/curl-rustls/Cargo.toml
FIDELITY_CURL_RUSTLS="$(pwd)/tools/curl-rustls/target/release/curl-rustls" \
    cargo bench -p lastmile-agent --bench fidelity
