"""`python -m tagserver.healthcheck`: exit 0 when this machine's server answers /healthz 200.

For the container image's HEALTHCHECK (slim images have no curl) and systemd or cron
watchdogs. Standard library only and no tagserver import beyond this module, so a check every
few seconds costs a few milliseconds of CPU. It reads the same TAGSERVER_HOST/TAGSERVER_PORT
as the server; a wildcard listen address is checked on loopback. The reason for a failure is
printed, so `docker inspect` shows why a container is unhealthy.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def healthz_url(environ: Mapping[str, str] = os.environ) -> str:
    host = environ.get("TAGSERVER_HOST", "127.0.0.1").strip()
    host = WILDCARDS.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{environ.get('TAGSERVER_PORT', '8080').strip()}/healthz"


def check(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """(healthy, what to print)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status == 200, f"{response.status} {_reason(response.read())}"
    except urllib.error.HTTPError as exc:
        return False, f"{exc.code} {_reason(exc.read())}"
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"no answer from {url}: {reason}"


def _reason(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(data, dict):
        return str(data.get("reason") or data.get("status") or "")
    return ""


def main() -> int:
    healthy, message = check(healthz_url())
    print(message, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
