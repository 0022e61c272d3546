"""What changed between two containers, in the container's own terms.

Not a text diff: "trigger purchase changed (conditions)", "tag crm_webhook added",
"transformations reordered". Values are not shown for changed entries, only field names,
so a diff never prints a token that sits in a tag's params.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SECTIONS = ("clients", "variables", "triggers", "tags", "transformations")
SINGULAR = {s: s[:-1] for s in SECTIONS}
SCALARS = ("name", "version", "description", "consent_mode")
NESTED = ("params", "set")  # fields whose own keys are named in a change


@dataclass(frozen=True)
class Change:
    section: str  # one of SECTIONS, or "container" for the top-level fields
    name: str
    kind: str  # added | removed | changed | reordered
    fields: tuple[str, ...] = ()
    before: Any = None  # only for the container's own scalar fields
    after: Any = None

    def __str__(self) -> str:
        if self.section == "container":
            return f"{self.name}: {self.before!r} → {self.after!r}"
        what = SINGULAR.get(self.section, self.section)
        if self.kind == "reordered":
            return f"{self.section} reordered: {', '.join(self.fields)}"
        fields = f" ({', '.join(self.fields)})" if self.fields else ""
        return f"{what} {self.name!r} {self.kind}{fields}"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"section": self.section, "name": self.name, "kind": self.kind,
                               "fields": list(self.fields)}  # fmt: skip
        if self.section == "container":
            out.update(before=self.before, after=self.after)
        return out


def _named(data: Any, section: str) -> dict[str, Any]:
    items = data.get(section) if isinstance(data, dict) else None
    if not isinstance(items, list):
        return {}
    out: dict[str, Any] = {}
    for i, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        out[name if isinstance(name, str) else f"[{i}]"] = item
    return out


def changed_fields(old: Any, new: Any) -> tuple[str, ...]:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return () if old == new else ("(whole entry)",)
    fields: list[str] = []
    for key in list(old) + [k for k in new if k not in old]:
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key in NESTED and isinstance(a, dict) and isinstance(b, dict):
            fields.extend(f"{key}.{k}" for k in changed_fields(a, b))
        else:
            fields.append(key)
    return tuple(fields)


def diff(old: Any, new: Any) -> list[Change]:
    """Every change from `old` to `new` (parsed container.json documents)."""
    changes = []
    for key in SCALARS:
        a = old.get(key) if isinstance(old, dict) else None
        b = new.get(key) if isinstance(new, dict) else None
        if a != b:
            changes.append(Change("container", key, "changed", before=a, after=b))
    for section in SECTIONS:
        a, b = _named(old, section), _named(new, section)
        for name in b:
            if name not in a:
                changes.append(Change(section, name, "added"))
        for name in a:
            if name not in b:
                changes.append(Change(section, name, "removed"))
            elif a[name] != b[name]:
                changes.append(Change(section, name, "changed", changed_fields(a[name], b[name])))
        common_a = [n for n in a if n in b]
        common_b = [n for n in b if n in a]
        if common_a != common_b:
            changes.append(Change(section, "", "reordered", tuple(common_b)))
    return changes


def summary(changes: list[Change]) -> str:
    """One line for the log: `tags +crm_webhook; triggers ~purchase(conditions)`."""
    if not changes:
        return "no changes"
    parts: dict[str, list[str]] = {}
    sign = {"added": "+", "removed": "-", "changed": "~"}
    for c in changes:
        if c.section == "container":
            parts.setdefault("container", []).append(f"{c.name} {c.before!r}→{c.after!r}")
        elif c.kind == "reordered":
            parts.setdefault(c.section, []).append("reordered")
        else:
            fields = f"({','.join(c.fields)})" if c.fields else ""
            parts.setdefault(c.section, []).append(f"{sign[c.kind]}{c.name}{fields}")
    return "; ".join(f"{section} {' '.join(items)}" for section, items in parts.items())
