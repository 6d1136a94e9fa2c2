#!/usr/bin/env bash
# Everything a fresh machine needs before the test suite runs: system libraries, a
# headless browser, schemathesis for the schema fuzz, the public MaxMind test
# databases, and a running PostgreSQL. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
dpkg -s libpq-dev >/dev/null 2>&1 || need_apt+=(libpq-dev)
command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# The dashboard's browser tests drive Debian's headless Chromium through chromedriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# The three-replica test puts the controllers behind Debian's HAProxy (it starts its own,
# with a config of its own; the system service is not used).
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
# The path trace test builds network namespaces with routers between them (ip, tc).
command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || need_apt+=(iproute2)
# `bench http` measures the API with wrk beside an actix-web hello world.
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
# The schema fuzz (scripts/fuzz.sh) runs schemathesis in a venv of its own.
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest

# PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres): start it if it is down.
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  echo "setup: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 30); do
    pg_isready -h 127.0.0.1 -p 5432 -q && break
    sleep 1
  done
fi
pg_isready -h 127.0.0.1 -p 5432 || { echo "setup: PostgreSQL is not reachable at 127.0.0.1:5432" >&2; exit 1; }

# schemathesis for scripts/fuzz.sh, pinned (its CLI changes between versions), in a venv
# kept outside the checkout (scripts/fuzz-venv.sh names it), so a fresh clone or a
# `cargo clean` does not install it again; reinstalled only when missing or of another
# version.
schemathesis_version=4.32.5
fuzz_venv="$(bash scripts/fuzz-venv.sh)"
if ! "$fuzz_venv/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $schemathesis_version"; then
  echo "setup: installing schemathesis $schemathesis_version into $fuzz_venv"
  rm -rf "$fuzz_venv"
  mkdir -p "$(dirname "$fuzz_venv")"
  python3 -m venv "$fuzz_venv"
  "$fuzz_venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi

# aiosmtpd, the SMTP server the alert email tests start, pinned, in a venv of its own
# (scripts/smtp-venv.sh names it).
aiosmtpd_version=1.4.6
smtp_venv="$(bash scripts/smtp-venv.sh)"
if ! "$smtp_venv/bin/python" -c "import aiosmtpd, sys; sys.exit(aiosmtpd.__version__ != '$aiosmtpd_version')" 2>/dev/null; then
  echo "setup: installing aiosmtpd $aiosmtpd_version into $smtp_venv"
  rm -rf "$smtp_venv"
  mkdir -p "$(dirname "$smtp_venv")"
  python3 -m venv "$smtp_venv"
  "$smtp_venv/bin/pip" install --quiet --disable-pip-version-check "aiosmtpd==$aiosmtpd_version"
fi

bash scripts/fetch-test-data.sh
