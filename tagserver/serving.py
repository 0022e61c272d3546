"""`tagserver serve`'s start-up in the right order, and the note it leaves in its data dir.

The listening socket is bound first: a second `serve` on the same address must fail before it
touches anything a running server relies on (the preview sign-in token, the metrics
directory). Once bound, the server notes its pid and address in the data dir so that
`tagserver preview link` can reach the running server's sign-in page.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from .settings import Settings

SERVING_FILE = "serving.json"


class AddressInUse(OSError):
    """The address is taken (often by a tagserver already running)."""


def bind(settings: Settings) -> socket.socket:
    """The server's socket, bound to TAGSERVER_HOST:TAGSERVER_PORT (uvicorn listens on it)."""
    host, port = settings.host, settings.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AddressInUse(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)  # for uvicorn's worker processes
    return sock


def base_url(settings: Settings) -> str:
    """The server's own URL as seen from this machine."""
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "localhost"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def serving_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / SERVING_FILE


def record(settings: Settings) -> None:
    """Note in the data dir that this process serves it, and where."""
    note = {
        "pid": os.getpid(),
        "url": base_url(settings),
        "preview_password": bool(settings.preview_password),
    }
    settings.data_path  # noqa: B018 - creates the directory
    path = serving_path(settings)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(note))
    os.replace(tmp, path)


def forget(settings: Settings) -> None:
    """Remove the note if it is this process's (another server may have taken over)."""
    note = running(settings)
    if note is not None and note.get("pid") == os.getpid():
        serving_path(settings).unlink(missing_ok=True)


def running(settings: Settings) -> dict[str, Any] | None:
    """The note of the server running on this data dir, or None when none is."""
    try:
        note = json.loads(serving_path(settings).read_text())
        pid = int(note["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # left behind by a server that was killed
        except PermissionError:
            pass  # alive, run by another user
    return {
        "pid": pid,
        "url": str(note.get("url", "")),
        "password": bool(note.get("preview_password")),
    }
