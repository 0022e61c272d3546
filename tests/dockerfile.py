"""A small Dockerfile reader for tests: the final stage's instructions, by keyword."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    """The final stage of a Dockerfile: its instructions, by keyword."""

    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"the Dockerfile has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                env[name] = value
        return env

    def exec_form(self, keyword: str) -> list[str]:
        """A JSON-array instruction (exec form: no shell between Docker and the process)."""
        args = self.last(keyword)
        if keyword == "HEALTHCHECK":
            assert " CMD " in f" {args} ", args
            args = args.split("CMD", 1)[1].strip()
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
        return value


def final_stage(path: Path) -> Stage:
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue  # comments (and parser directives) may sit inside a continuation
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    stage = Stage()
    for line in lines:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage = Stage()
        stage.instructions.append((keyword.upper(), args.strip()))
    return stage


IMAGE = final_stage(Path(__file__).resolve().parent.parent / "Dockerfile")
