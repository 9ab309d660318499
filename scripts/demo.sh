#!/usr/bin/env bash
# `make demo`: the platform and a simulated city in one process (Ctrl-C stops both).
set -euo pipefail
cd "$(dirname "$0")/.."
export WEIJIAN_LOG_LEVEL="${WEIJIAN_LOG_LEVEL:-INFO}"
exec .venv/bin/weijian demo "$@"
