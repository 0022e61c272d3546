"""Type-check the `tagserver` package as it installs: the engine and the built-in plugins.

clients/ and tags/ sit at the top of the repository but install as `tagserver.clients` and
`tagserver.tags` (pyproject's package-dir mapping). mypy cannot follow that mapping, nor the
import hook of an editable install, so this builds the installed layout out of symlinks in
build/typecheck/ (cheap, always current), runs `mypy -p tagserver` there with the project's
configuration, and prints the repository's paths in its messages (`clients/ga4.py`, not
`tagserver/clients/ga4.py`). Arguments go to mypy; the exit status is mypy's.

    .venv/bin/python scripts/typecheck.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"


def package_dirs() -> dict[str, str]:
    """The package-dir mapping, e.g. {"tagserver.clients": "clients"}."""
    with open(ROOT / "pyproject.toml", "rb") as file:
        config = tomllib.load(file)
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    return mapping


def build_tree(mapping: dict[str, str]) -> dict[str, str]:
    """Link every mapped folder into its installed place; returns installed -> repo prefixes."""
    shutil.rmtree(TREE / "tagserver", ignore_errors=True)
    TREE.mkdir(parents=True, exist_ok=True)
    prefixes = {}
    for package, folder in sorted(mapping.items()):
        installed = TREE / package.replace(".", "/")
        installed.mkdir(parents=True, exist_ok=True)
        for entry in (ROOT / folder).iterdir():
            if entry.name != "__pycache__" and not (installed / entry.name).exists():
                (installed / entry.name).symlink_to(entry)
        prefixes[package.replace(".", "/") + "/"] = folder.rstrip("/") + "/"
    return prefixes


def main() -> int:
    prefixes = build_tree(package_dirs())
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    command += ["--cache-dir", str(TREE / ".mypy_cache"), *sys.argv[1:], "-p", "tagserver"]
    env = {**os.environ, "MYPY_FORCE_COLOR": "0"}
    done = subprocess.run(command, cwd=TREE, capture_output=True, text=True, env=env)
    # Longest installed prefix first: tagserver/clients/ before tagserver/.
    ordered = sorted(prefixes.items(), key=lambda item: -len(item[0]))
    for line in done.stdout.splitlines():
        for installed, folder in ordered:
            if line.startswith(installed):
                line = folder + line[len(installed) :]
                break
        print(line)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
