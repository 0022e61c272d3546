#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian machine, then run it all:
# Debian's chromium (real-browser tests), redis-server (shared preview store), postgresql
# (the shared outbox: the tests start their own cluster from its binaries) and nginx (tagserver
# under a path of the site, behind a real reverse proxy), the test extras; caddy, nginx, openssl
# and systemd's systemd-analyze check the deploy/ examples; prometheus's promtool checks
# deploy/prometheus/alerts.yaml (the Prometheus server itself is not started).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
command -v caddy >/dev/null 2>&1 || missing+=(caddy)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)  # promtool checks the alert rules
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    # Installing caddy or nginx must not start them as services (listening on port 80):
    # policy-rc.d's exit status 101 tells the packages' scripts not to start anything.
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        guard=/usr/sbin/policy-rc.d
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    [ -z "$guard" ] || rm -f "$guard"
fi
python -m pip install -q -e '.[test]'
exec python -m pytest "$@"
