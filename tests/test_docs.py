"""The README and the shipped files stay in step with the code."""

import json
import subprocess
import sys
from pathlib import Path

from tagserver.cli.settings import settings_table

ROOT = Path(__file__).resolve().parent.parent


def test_readme_lists_every_setting_with_its_default():
    readme = (ROOT / "README.md").read_text()
    for name, default, _help in settings_table():
        shown = f"`{default}`" if default else "—"
        assert f"| `{name}` | {shown} |" in readme, (
            f"{name} missing or stale in README's settings table"
        )


def test_shipped_schema_is_current():
    generated = subprocess.run(
        [sys.executable, "-m", "tagserver", "schema"], capture_output=True, text=True, check=True
    )
    shipped = json.loads((ROOT / "container.schema.json").read_text())
    assert shipped == json.loads(generated.stdout), "run: tagserver schema > container.schema.json"


def test_readme_has_exactly_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [block.split("\n")[1] for block in quick_start.split("```sh")[1:]]
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/tagserver serve",
        "bash scripts/test.sh",
    ]
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
