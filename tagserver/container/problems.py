"""Validation problems as a marketer reads them: the file and line, the name of the trigger,
tag, variable or client, then the JSON path inside it.

    container.json:23: triggers[1] "purchase": conditions[0].operator: unknown operator ">" ...

Lines come from one scan of the file's text that notes where each value starts. It runs only
when a container is refused, never per event.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import re
from typing import Any

Key = tuple[str | int, ...]

NAMED_SECTIONS = ("triggers", "tags", "variables", "clients")
_OWNER = re.compile(r"^(" + "|".join(NAMED_SECTIONS) + r")\[(\d+)\]")
_PATH_PART = re.compile(r"\[(\d+)\]|\.?([^.\[]+)")
_SPACE = re.compile(r"[ \t\n\r]*")
_ATOM = re.compile(r"[^,\]}\s]+")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
MAX_DEPTH = 200


def split_path(path: str) -> Key:
    """`triggers[1].conditions[0].operator` → ("triggers", 1, "conditions", 0, "operator")."""
    parts: list[str | int] = []
    for index, key in _PATH_PART.findall(path):
        parts.append(int(index) if index else key)
    return tuple(parts)


class _Lines:
    """Where (1-based line) each value of a JSON text starts, by its path; a member's line is
    its key's."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.breaks = [m.start() for m in re.finditer("\n", text)]
        self.found: dict[Key, int] = {}

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self.breaks, pos) + 1

    def skip(self, pos: int) -> int:
        match = _SPACE.match(self.text, pos)
        return match.end() if match else pos

    def string(self, pos: int) -> tuple[str, int]:
        """The JSON string starting at `pos` and the position after it."""
        match = _STRING.match(self.text, pos)
        if match is None:
            raise ValueError("not a string")
        value: str = json.loads(match.group())
        return value, match.end()

    def value(self, pos: int, key: Key) -> int:
        """Scan the value at `pos` (spaces before it allowed); the position after it."""
        text = self.text
        pos = self.skip(pos)
        self.found.setdefault(key, self.line(pos))
        if len(key) > MAX_DEPTH or pos >= len(text):
            raise ValueError("too deep or cut short")
        char = text[pos]
        if char == '"':
            return self.string(pos)[1]
        if char == "{":
            pos = self.skip(pos + 1)
            if text[pos] == "}":
                return pos + 1
            while True:
                pos = self.skip(pos)
                name, after = self.string(pos)
                self.found[(*key, name)] = self.line(pos)
                colon = self.skip(after)
                pos = self.skip(self.value(colon + 1, (*key, name)))
                if text[pos] == "}":
                    return pos + 1
                pos += 1  # the comma
        if char == "[":
            pos = self.skip(pos + 1)
            if text[pos] == "]":
                return pos + 1
            index = 0
            while True:
                pos = self.skip(self.value(pos, (*key, index)))
                if text[pos] == "]":
                    return pos + 1
                pos += 1
                index += 1
        match = _ATOM.match(text, pos)
        return match.end() if match else pos + 1


def value_lines(text: str) -> dict[Key, int]:
    """The line of every value in a JSON text by its path; what was found before a surprise
    when the text is not well-formed JSON."""
    lines = _Lines(text)
    with contextlib.suppress(ValueError, IndexError, RecursionError):
        lines.value(0, ())
    return lines.found


def line_of(path: str, lines: dict[Key, int]) -> int | None:
    """The line of the value at `path`, else of its nearest ancestor that the file has."""
    key = split_path(path)
    while key:
        if key in lines:
            return lines[key]
        key = key[:-1]
    return None


def owner_name(path: str, data: Any) -> str | None:
    """The name of the trigger, tag, variable or client `path` points into, if it has one."""
    match = _OWNER.match(path)
    if match is None or not isinstance(data, dict):
        return None
    items = data.get(match.group(1))
    index = int(match.group(2))
    if not isinstance(items, list) or index >= len(items) or not isinstance(items[index], dict):
        return None
    name = items[index].get("name")
    return name if isinstance(name, str) and name.strip() else None


def describe(path: str, message: str, line: int | None, name: str | None, file: str | None) -> str:
    """One problem as `validate` prints it: `file:line: owner "name": rest.of.path: message`."""
    if file:
        where = f"{file}:{line}: " if line else f"{file}: "
    else:
        where = f"line {line}: " if line else ""
    if not path:
        return f"{where}{message}" if line else message
    subject = path
    match = _OWNER.match(path)
    if name is not None and match is not None:
        rest = path[match.end() :].lstrip(".")
        subject = f'{match.group(0)} "{name}"' + (f": {rest}" if rest else "")
    return f"{where}{subject}: {message}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
