#!/usr/bin/env bash
# Make .venv ready to run the tests, on this machine or a fresh Debian 12: Debian packages
# when missing (python3 with venv, chromium for the real-browser tests, redis-server for the
# shared preview store, postgresql for the shared outbox), then a virtual environment in .venv
# with tagserver and its test extras (Debian's own Python refuses `pip install` outside one:
# externally-managed-environment).
# Does nothing that is already done; run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    echo "installing Debian packages: $*"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    # Installing caddy or nginx must not start them as services (listening on port 80):
    # policy-rc.d's exit status 101 tells the packages' scripts not to start anything.
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
        guard=/usr/sbin/policy-rc.d
    fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    [ -z "$guard" ] || "${sudo[@]}" rm -f "$guard"
}

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# the shared outbox's tests start their own PostgreSQL cluster from Debian's binaries
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
# caddy, nginx, openssl and systemd's systemd-analyze check the deploy/ examples; nginx also
# stands in front of tagserver served under a path of the site (TAGSERVER_ROOT_PATH)
command -v caddy >/dev/null 2>&1 || missing+=(caddy)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi

if ! .venv/bin/python -c '' >/dev/null 2>&1; then
    rm -rf .venv
    if ! python3 -m venv .venv >/dev/null 2>&1; then  # Debian: venv needs python3-venv
        rm -rf .venv
        apt_install python3-venv
        python3 -m venv .venv
    fi
fi
# (re)install only when pyproject.toml changed since the last install
stamp=$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
if [ "$(cat .venv/.tagserver-test-extras 2>/dev/null)" != "$stamp" ]; then
    .venv/bin/python -m pip install -q -e '.[test]'
    echo "$stamp" > .venv/.tagserver-test-extras
fi
