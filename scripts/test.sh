#!/usr/bin/env bash
# The whole test suite, from a fresh machine: environment, PostgreSQL, lint, tests.
# Usage: bash scripts/test.sh [pytest options]     e.g. bash scripts/test.sh -m "not e2e"
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# The team-server tests start a real PostgreSQL and check docker-compose.yml with Debian's
# docker-compose (neither needs Docker); as root, the launcher builds the server's environment
# from the system Python 3.11 (its venv module).
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 ||
    missing+=(docker-compose)
if [[ $(id -u) == 0 ]] && ! /usr/bin/python3.11 -c 'import ensurepip' 2>/dev/null; then
    missing+=(python3.11-venv)
fi
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Set-up, not a test: the server's own environment is built here (from PyPI, once), so that
# no test needs the network.
python -m cifar_mlflow server prepare >/dev/null
ruff check .
ruff format --check .
exec pytest "$@"
