"""The boundaries the code promises: built-in plugins use only the public plugin API, and
tagserver's modules import each other without cycles. Read from the source with `ast`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# repository folder → the package it installs as (pyproject's package-dir mapping)
PACKAGES = {
    "tagserver": ROOT / "tagserver",
    "tagserver.clients": ROOT / "clients",
    "tagserver.tags": ROOT / "tags",
}
PLUGIN_PACKAGES = ("tagserver.clients", "tagserver.tags")
# what a plugin may import from tagserver: the API, its toolkit, and other plugins
PUBLIC = ("tagserver", "tagserver.plugins", "tagserver.toolkit")


def modules() -> dict[str, Path]:
    """Every module of the installed `tagserver` package, by dotted name."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = modules()


def imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """(module imported, line) for every import in the file: at the top, inside functions and
    under `TYPE_CHECKING` alike, relative ones resolved. `from package import name` counts as
    importing `package.name` when that is a module."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                yield (submodule if submodule in MODULES else module), node.lineno


def is_public(target: str) -> bool:
    if target in PUBLIC or target.startswith("tagserver.toolkit."):
        return True
    return any(target == p or target.startswith(p + ".") for p in PLUGIN_PACKAGES)


def test_the_module_map_sees_the_plugins_and_the_engine():
    assert "tagserver.clients.collector" in MODULES
    assert "tagserver.tags.meta_capi.sender" in MODULES
    assert "tagserver.preview.routes" in MODULES and "tagserver.web.app" in MODULES


def test_built_in_plugins_import_only_the_public_plugin_api():
    reaching = []
    for name, path in MODULES.items():
        if not name.startswith(PLUGIN_PACKAGES):
            continue
        for target, line in imports(name, path):
            if (target == "tagserver" or target.startswith("tagserver.")) and not is_public(target):
                reaching.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not reaching, "plugins reach into engine internals:\n" + "\n".join(reaching)


def test_the_check_catches_a_reach_into_the_engine(tmp_path):
    """The walk above must see every form of import, or it would pass on anything."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from tagserver import Tag\n"
        "from tagserver.toolkit import cookies\n"
        "if TYPE_CHECKING:\n"
        "    from tagserver.engine.hit import Hit\n"
        "def f():\n"
        "    import tagserver.container.refs\n"
        "    from ...redact import Redactor\n"
    )
    path = tmp_path / "plugin.py"
    path.write_text(source)
    found = [t for t, _ in imports("tagserver.tags.acme.plugin", path) if not is_public(t)]
    assert found == [
        "typing",
        "tagserver.engine.hit",
        "tagserver.container.refs",
        "tagserver.redact",
    ]
    assert is_public("tagserver") and is_public("tagserver.toolkit.cookies")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph() -> dict[str, set[str]]:
    return {
        name: {target for target, _ in imports(name, path) if target in MODULES}
        for name, path in MODULES.items()
    }


def test_no_import_cycles_among_tagserver_modules():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_engine_knows_no_built_in_plugin_by_name():
    names = {"collector", "events_api", "ga4", "meta_capi", "http_request"}
    engine = [path for name, path in MODULES.items() if not name.startswith(PLUGIN_PACKAGES)]
    found = []
    for path in engine:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not found, "the engine names built-in plugins:\n" + "\n".join(found)
