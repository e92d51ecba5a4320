#!/usr/bin/env bash
# The whole test suite, from a fresh machine: environment, PostgreSQL, lint, tests.
# Usage: bash scripts/test.sh [pytest options]     e.g. bash scripts/test.sh -m "not e2e"
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# The team-server tests start a real PostgreSQL (Debian's package; Docker is not needed).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
ruff check .
ruff format --check .
exec pytest "$@"
