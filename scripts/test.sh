#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian machine, then run it all.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing Debian's redis-server for the shared preview store tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
python -m pip install -q -e '.[test]'
exec python -m pytest "$@"
