"""JSON Schema of container.json, built from the registered plugins' declared parameters."""

from __future__ import annotations

from typing import Any

from ..event import CONSENT_TYPES
from ..plugins import Registry, params_schema
from ..visitor import cookie_keeper
from .transformations import schema as transformations_schema
from .triggers import OPERATORS
from .variables import VARIABLE_TYPES


def _one_of_types(
    kinds: dict[str, Any], base: dict[str, Any], params_key: str | None
) -> list[dict[str, Any]]:
    out = []
    for name, declared in kinds.items():
        schema = params_schema(declared)
        props = dict(base)
        props["type"] = {"const": name}
        if params_key:
            props[params_key] = schema
            required = ["name", "type"]
        else:
            props.update(schema["properties"])
            required = ["name", "type", *schema["required"]]
        out.append({
            "type": "object",
            "properties": props,
            "required": required,
            "additionalProperties": False,
        })  # fmt: skip
    return out


def container_schema(registry: Registry) -> dict[str, Any]:
    names = {"type": "array", "items": {"type": "string"}}
    client_types = {k: c.params for k, c in sorted(registry.clients.items())}
    tag_types = {k: t.params for k, t in sorted(registry.tags.items())}
    condition = {
        "type": "object",
        "properties": {
            "variable": {"type": "string", "description": "Variable name, e.g. page_path"},
            "operator": {"enum": list(OPERATORS)},
            "value": {},
            "negate": {"type": "boolean"},
            "ignore_case": {"type": "boolean"},
        },
        "required": ["variable", "operator", "value"],
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "tagserver container",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "$schema": {"type": "string"},
            "name": {"type": "string"},
            "version": {"type": ["string", "integer"]},
            "description": {"type": "string"},
            "consent_mode": {"enum": ["basic", "strict"], "default": "basic"},
            "cookie_keeper": cookie_keeper.SCHEMA,
            "clients": {
                "type": "array",
                "items": {
                    "oneOf": _one_of_types(
                        client_types,
                        {
                            "name": {"type": "string"},
                            "priority": {"type": "integer"},
                            "description": {"type": "string"},
                        },
                        "params",
                    )
                },
            },
            "variables": {
                "type": "array",
                "items": {
                    "oneOf": _one_of_types(
                        VARIABLE_TYPES,
                        {"name": {"type": "string"}, "description": {"type": "string"}},
                        None,
                    )
                },
            },
            "triggers": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "event": {
                            "anyOf": [
                                {"type": "string"},
                                names,
                                {
                                    "type": "object",
                                    "properties": {
                                        "regex": {"type": "string"},
                                        "ignore_case": {"type": "boolean"},
                                    },
                                    "required": ["regex"],
                                    "additionalProperties": False,
                                },
                            ]
                        },
                        "conditions": {"type": "array", "items": condition},
                    },
                    "required": ["name"],
                    "additionalProperties": False,
                },
            },
            "tags": {
                "type": "array",
                "items": {
                    "oneOf": _one_of_types(
                        tag_types,
                        {
                            "name": {"type": "string"},
                            "description": {"type": "string"},
                            "fire_on": names,
                            "block_on": names,
                            "consent": {"type": "array", "items": {"enum": list(CONSENT_TYPES)}},
                            "paused": {"type": "boolean"},
                        },
                        "params",
                    )
                },
            },
            "transformations": transformations_schema(condition, sorted(tag_types)),
        },
    }
