#!/usr/bin/env bash
# Set up everything the test suite needs (Python dev dependencies, viewer JS, a Java runtime
# for Bio-Formats, headless Chromium for the viewer test) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --dev

need_apt=()
command -v java >/dev/null || need_apt+=(default-jre-headless)
command -v chromium >/dev/null || need_apt+=(chromium)
if (( ${#need_apt[@]} )); then
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "test: missing ${need_apt[*]} (install them with apt-get as root); dependent tests will skip" >&2
    fi
fi

exec .venv/bin/python -m pytest "$@"
