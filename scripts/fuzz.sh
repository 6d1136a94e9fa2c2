#!/usr/bin/env bash
# Schema fuzz of the served OpenAPI document: schemathesis (installed by setup.sh) sends
# generated requests, valid and invalid, to every operation of a real controller on
# PostgreSQL (a fresh database, dropped afterwards), authenticated as the operation's
# security says: an owner token, an agent token, an ISP token and the admin token. A
# verified site (a static file server on loopback), a check and a run are made first,
# and the fuzz draws most ids from them, so operations on ids reach their logic. Any
# 5xx fails the run. Bounded and reproducible: deterministic generation (the same
# cases every run), at most 25 examples per operation, a hard time limit. The report
# (NDJSON events, JUnit) stays in target/fuzz-report.
#
# Suppressed on purpose:
# - NUL characters (U+0000) in generated strings (`--generation-allow-x00 false`): on
#   PostgreSQL they answer 500 until issue 13 defect 5 lands. To fuzz them again, set
#   LASTMILE_FUZZ_ALLOW_NUL=true (and make that the default once defect 5 is merged).
# - 503 from the Stripe operations (checkout, onboarding, webhook): this controller has
#   no Stripe keys, and "payments are not set up here" is a deliberate 503.
#
# Fuzzes target/debug/lastmile-controller, built first (a no-op after the test suite);
# LASTMILE_CONTROLLER=path fuzzes another build as it is. Knobs: LASTMILE_FUZZ_EXAMPLES
# (25), LASTMILE_FUZZ_MAX_TIME (300 s, then the run fails), LASTMILE_FUZZ_GEN (generation
# flags instead of `--generation-deterministic`, e.g. `--seed 13`). Figures
# (operations, test cases, operations failing, seconds) go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
controller="${LASTMILE_CONTROLLER:-$target_dir/debug/lastmile-controller}"
schemathesis="$(bash scripts/fuzz-venv.sh)/bin/schemathesis"
[ -x "$schemathesis" ] || { echo "fuzz: $schemathesis missing: run scripts/setup.sh" >&2; exit 1; }
[ -n "${LASTMILE_CONTROLLER:-}" ] || cargo build --quiet -p lastmile-controller

max_examples="${LASTMILE_FUZZ_EXAMPLES:-25}"
max_time="${LASTMILE_FUZZ_MAX_TIME:-300}"
allow_nul="${LASTMILE_FUZZ_ALLOW_NUL:-true}"

pg="postgres://postgres@127.0.0.1:5432"
db="lastmile_fuzz_$$"
work="$(mktemp -d)"
server_pid=""
site_pid=""
cleanup() {
  for pid in $server_pid $site_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql -q "$pg/postgres" -c "CREATE DATABASE $db" >/dev/null

export DATABASE_URL="$pg/$db"
export LASTMILE_DATA_DIR="$work/data"
export LASTMILE_ADMIN_TOKEN="adm_fuzz_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
mkdir -p "$LASTMILE_DATA_DIR"
# The fuzz's own site lives on loopback, so site checks must allow private origins.
export LASTMILE_CONFIG="$work/controller.toml"
echo "allow_private_sites = true" >"$LASTMILE_CONFIG"
# A lease may be held as a long poll up to max_lease_wait_s (25 s) when the agent has no
# work, by design; schemathesis gives up on a request after 10 s (--request-timeout
# below), so the fuzzed controller holds leases for at most 5 s.
echo "max_lease_wait_s = 5" >>"$LASTMILE_CONFIG"
"$controller" migrate >/dev/null 2>&1

# Accounts, by the operator CLI as an operator makes them.
owner_out="$("$controller" owner create --name "Fuzz owner")"
owner_id="$(echo "$owner_out" | head -n1 | awk '{print $2}')"
owner_token="$(echo "$owner_out" | grep -o 'lmo_[0-9a-f]*')"
"$controller" owner credit --owner "$owner_id" --amount-minor 1000000 >/dev/null
enrol_key="$("$controller" volunteer create --name "Fuzz volunteer" | tail -n1 | tr -d '[:space:]')"
isp_token="$("$controller" isp create --name "Fuzz ISP" --asn 64501 | tail -n1 | tr -d '[:space:]')"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port="$(free_port)"
base="http://127.0.0.1:$port"
"$controller" serve --listen "127.0.0.1:$port" >"$work/controller.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/controller.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS "$base/healthz" >/dev/null

# An agent, enrolled over the API as the agent software does.
agent_token="$(curl -fsS -X POST "$base/api/v1/agents/enrol" -H 'content-type: application/json' \
  -d "{\"enrol_key\": \"$enrol_key\", \"name\": \"fuzz-agent\", \"declared_class\": \"cable\", \"version\": \"fuzz\"}" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')"

# A verified site with a check and a run, so that the operations on ids reach their
# handlers' logic, not only "not found": the fuzz draws ids (and a check's site_id)
# from these most of the time. The site is a static file server on loopback.
api() {
  local args=(-fsS -X "$1" "$base$2" -H "authorization: Bearer $owner_token")
  [ $# -lt 3 ] || args+=(-H 'content-type: application/json' -d "$3")
  curl "${args[@]}"
}
field() { python3 -c "import json, sys; print(json.load(sys.stdin)[\"$1\"])"; }
site_port="$(free_port)"
mkdir -p "$work/site/.well-known/lastmile"
python3 -m http.server --bind 127.0.0.1 --directory "$work/site" "$site_port" >"$work/site.log" 2>&1 &
site_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$site_port/" >/dev/null 2>&1 && break
  sleep 0.1
done
site_json="$(api POST /api/v1/sites "{\"origin\": \"http://127.0.0.1:$site_port\"}")"
site_id="$(echo "$site_json" | field id)"
echo "$site_json" | field verification_token | tr -d '\n' \
  >"$work/site/.well-known/lastmile/$(echo "$site_json" | field verification_token)"
api POST "/api/v1/sites/$site_id/verify" >/dev/null
check_id="$(api POST /api/v1/checks "{\"site_id\": \"$site_id\", \"url\": \"http://127.0.0.1:$site_port/\"}" | field id)"
run_id="$(api POST "/api/v1/checks/$check_id/runs" | field id)"

export LASTMILE_FUZZ_OWNER_TOKEN="$owner_token" LASTMILE_FUZZ_AGENT_TOKEN="$agent_token"
export LASTMILE_FUZZ_ISP_TOKEN="$isp_token"
config="$work/schemathesis.toml"
cat >"$config" <<EOF
# Each operation gets the token its security requirement names.
[auth.openapi.owner_token]
bearer = "\${LASTMILE_FUZZ_OWNER_TOKEN}"
[auth.openapi.agent_token]
bearer = "\${LASTMILE_FUZZ_AGENT_TOKEN}"
[auth.openapi.isp_token]
bearer = "\${LASTMILE_FUZZ_ISP_TOKEN}"
[auth.openapi.admin_token]
bearer = "\${LASTMILE_ADMIN_TOKEN}"

[dictionaries.site]
values = ["$site_id"]
[dictionaries.check]
values = ["$check_id"]
[dictionaries.run]
values = ["$run_id"]

[[operations]]
include-path-regex = "^/api/v1/sites/"
parameters = { "path.id" = { dictionary = "site", probability = 0.8 } }

[[operations]]
include-path-regex = "^/api/v1/checks"
parameters = { "path.id" = { dictionary = "check", probability = 0.8 }, "path.run_id" = { dictionary = "run", probability = 0.8 }, "body.site_id" = { dictionary = "site", probability = 0.8 } }

# No Stripe keys here: payments answer a deliberate 503 "not set up".
[[operations]]
include-operation-id = ["checkout", "onboarding", "webhook"]
checks.not_a_server_error.expected-statuses = ["1XX", "2XX", "3XX", "4XX", "503"]
EOF

echo "==> schema fuzz: at most $max_examples examples per operation, deterministic, at most ${max_time}s"
report="$PWD/target/fuzz-report"
rm -rf "$report"
mkdir -p "$report"
start=$(date +%s)
status=0
# `timeout` is the hard stop; schemathesis's own --max-time would instead keep
# fuzzing until the budget is spent. Run from the scratch dir: schemathesis leaves
# a cache folder where it runs.
(cd "$work" && timeout --signal=INT --kill-after=30 "$max_time" \
  "$schemathesis" --config-file "$config" run "$base/api/openapi.json" \
  --checks not_a_server_error \
  --max-examples "$max_examples" \
  ${LASTMILE_FUZZ_GEN:---generation-deterministic} \
  --generation-allow-x00 "$allow_nul" \
  --request-timeout 10 \
  --workers 2 \
  --no-color \
  --report ndjson,junit --report-dir "$report") 2>&1 | tee "$work/schemathesis.out" || status=$?
seconds=$(($(date +%s) - start))
[ "$status" -ne 124 ] || echo "fuzz: stopped after ${max_time}s (LASTMILE_FUZZ_MAX_TIME)" >&2

python3 - "$report" "$work/schemathesis.out" "$seconds" <<'EOF' || true
import glob, re, sys
import xml.etree.ElementTree as ET
report, out, seconds = sys.argv[1:4]
operations = failed = 0
for path in glob.glob(f"{report}/*.xml"):
    for case in ET.parse(path).iter("testcase"):
        if case.get("name") != "Stateful tests":
            operations += 1
            failed += case.find("failure") is not None or case.find("error") is not None
generated = re.findall(r"(\d+) generated", open(out, errors="replace").read())
cases = generated[-1] if generated else "?"
print(f"fuzz figures: {operations} operations, {cases} test cases, {failed} operations failing, {seconds} s")
EOF
if [ "$status" -ne 0 ]; then
  echo "fuzz: schemathesis found server errors (exit $status); the controller's log:" >&2
  grep -E 'ERROR|WARN' "$work/controller.log" | tail -n 40 >&2 || true
fi
exit "$status"
