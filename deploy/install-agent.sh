#!/usr/bin/env bash
# Installs the Lastmile probe agent as a systemd service.
# Usage: sudo deploy/install-agent.sh path/to/lastmile-agent CONTROLLER_URL ENROL_KEY CONNECTION_CLASS
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 BINARY CONTROLLER_URL ENROL_KEY CONNECTION_CLASS" >&2; exit 2; }
binary=$1 controller=$2 key=$3 class=$4
case "$class" in dialup|satellite|mobile|dsl|cable|fibre) ;; *) echo "unknown connection class: $class" >&2; exit 2;; esac
install -m 0755 "$binary" /usr/local/bin/lastmile-agent
install -d -m 0755 /etc/lastmile
umask 077
cat > /etc/lastmile/agent.toml <<TOML
controller = "$controller"
enrol_key = "$key"
connection_class = "$class"
max_concurrent = 2
TOML
install -m 0644 "$(dirname "$0")/systemd/lastmile-agent.service" /etc/systemd/system/lastmile-agent.service
systemctl daemon-reload
systemctl enable --now lastmile-agent
echo "lastmile-agent installed and started; logs: journalctl -u lastmile-agent -f"
