#!/usr/bin/env bash
# Prints where the venv with aiosmtpd (the real SMTP server the alert email tests send
# to) lives: outside the checkout, in the user's cache, like the schema fuzz's.
set -euo pipefail
cache="${LASTMILE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lastmile}"
echo "$cache/smtp-venv"
