#!/usr/bin/env bash
# Prints where the schema fuzz's schemathesis venv lives: outside the checkout, in the
# user's cache ($LASTMILE_CACHE_DIR, else $XDG_CACHE_HOME/lastmile, else
# ~/.cache/lastmile), so every clone on the machine shares one install.
set -euo pipefail
cache="${LASTMILE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lastmile}"
echo "$cache/fuzz-venv"
