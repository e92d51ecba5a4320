#!/usr/bin/env bash
# Create .venv and install the project with its test extras; quick when nothing changed.
# Sourced by main.sh and test.sh; afterwards .venv/bin is first on PATH (`mlflow run` needs
# `python` to be the environment's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -e "$stamp" ]; then
    # torch and torchvision come from this machine's wheel cache (pip's constraint caps them).
    .venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
