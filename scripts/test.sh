#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian machine, then run it all:
# Debian's chromium (real-browser tests), redis-server (shared preview store) and postgresql
# (the shared outbox: the tests start their own cluster from its binaries), the test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python -m pip install -q -e '.[test]'
exec python -m pytest "$@"
