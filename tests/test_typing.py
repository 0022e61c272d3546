"""The typing rules CI's mypy run cannot state itself (scripts/typecheck.py runs mypy)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE = re.compile(r"#\s*type:\s*ignore(?P<rest>.*)$")
WITH_REASON = re.compile(r"\[[a-z0-9-]+(,\s*[a-z0-9-]+)*\]\s+#\s*\S")


def test_every_type_ignore_names_its_code_and_says_why() -> None:
    bare = []
    for folder in ("tagserver", "clients", "tags"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                found = IGNORE.search(line)
                if found and not WITH_REASON.match(found.group("rest").strip()):
                    bare.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not bare, "a `# type: ignore[code]  # reason` on the same line:\n" + "\n".join(bare)


def test_the_package_ships_its_types_marker() -> None:
    assert (ROOT / "tagserver" / "py.typed").is_file()
