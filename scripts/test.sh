#!/usr/bin/env bash
# Run the whole test suite on this machine or a fresh Debian 12: installs what it needs first
# (scripts/venv.sh: Debian's python3-venv, chromium, redis-server and postgresql when missing,
# and a virtual environment in .venv with the test extras). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/python -m pytest "$@"
