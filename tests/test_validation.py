"""`tagserver validate`: every problem, each with its JSON path and a suggestion."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tagserver.container.model import ContainerError, load, parse_json, validate
from tagserver.plugins import load_registry
from tagserver.settings import Settings

REGISTRY = load_registry()
ROOT = Path(__file__).resolve().parent.parent


def problems(container):
    return [str(p) for p in validate(container, REGISTRY)]


def base(**overrides):
    data = {
        "name": "t",
        "clients": [{"name": "api", "type": "events_api"}],
        "variables": [{"name": "order_value", "type": "event_data", "key": "value"}],
        "triggers": [{"name": "purchase", "event": "purchase"}],
        "tags": [{"name": "log", "type": "log", "fire_on": ["purchase"]}],
    }
    data.update(overrides)
    return data


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "tagserver", *args], capture_output=True, text=True, cwd=cwd
    )


def test_default_container_validates():
    result = run_cli("validate", str(ROOT / "container.json"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_five_mistakes_give_five_messages_with_paths(tmp_path):
    data = base(
        triggers=[
            {
                "name": "purchase",
                "event": "purchase",
                "conditions": [{"variable": "order_valeu", "operator": "greater_than", "value": 0}],
            },
            {"name": "landing", "event": {"regex": "page_(view"}},
        ],
        tags=[
            {"name": "log", "type": "log", "fire_on": ["purchse"]},
            {"name": "hook", "type": "lgo", "fire_on": ["purchase"]},
            {"name": "log", "type": "log", "fire_on": ["purchase"]},
        ],
    )
    path = tmp_path / "container.json"
    path.write_text(json.dumps(data))
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{path}: 5 problems\n")
    # each line: the file and line, the entry's name, the path inside it, the message
    lines = [
        line.strip().removeprefix(f"{path}:1: ")
        for line in result.stdout.splitlines()[1:]
        if line.strip()
    ]
    assert len(lines) == 5, result.stdout
    assert any(
        line.startswith('tags[0] "log": fire_on[0]:') and 'did you mean "purchase"' in line
        for line in lines
    )
    assert any(
        line.startswith('tags[1] "hook": type:') and 'did you mean "log"' in line for line in lines
    )
    assert any(line.startswith('tags[2] "log": name:') and "duplicate" in line for line in lines)
    assert any(
        line.startswith('triggers[0] "purchase": conditions[0].variable:')
        and 'did you mean "order_value"' in line
        for line in lines
    )
    assert any(
        line.startswith('triggers[1] "landing": event.regex:')
        and "invalid regular expression" in line
        for line in lines
    )


CONTAINER_WITH_MISTAKES = """{
  "name": "shop",
  "clients": [{"name": "api", "type": "events_api"}],
  "variables": [],
  "triggers": [
    {"name": "all", "event": "*"},
    {
      "name": "purchase",
      "event": "purchase",
      "conditions": [
        {"variable": "valeu", "operator": ">", "value": 0}
      ]
    }
  ],
  "tags": [{"name": "log", "type": "log", "fire_on": ["all"]}]
}
"""


def test_messages_name_the_file_line_and_entry(tmp_path):
    path = tmp_path / "container.json"
    path.write_text(CONTAINER_WITH_MISTAKES)
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert result.stdout.splitlines()[1:] == [
        f'  {path}:11: triggers[1] "purchase": conditions[0].variable: no variable named '
        '"valeu" — did you mean "value"?',
        f'  {path}:11: triggers[1] "purchase": conditions[0].operator: unknown operator ">" — '
        'did you mean "greater_than"? (operators: equals, contains, starts_with, ends_with, '
        "matches_regex, greater_than, greater_or_equal, less_than, less_or_equal, in, in_cidr)",
    ]


def test_one_problem_is_one_problem(tmp_path):
    path = tmp_path / "container.json"
    path.write_text(CONTAINER_WITH_MISTAKES.replace("valeu", "value"))
    result = run_cli("validate", str(path))
    assert result.stdout.splitlines()[0] == f"{path}: 1 problem"
    serve = run_cli("serve", "--container", str(path), "--data-dir", str(tmp_path / "data"))
    assert serve.returncode == 1
    assert f"{path}: 1 problem; not starting:" in serve.stderr
    assert f'{path}:11: triggers[1] "purchase": conditions[0].operator' in serve.stderr


@pytest.mark.parametrize(
    ("operator", "suggestion"),
    [
        (">", '"greater_than"?'),
        ("gt", '"greater_than"?'),
        (">=", '"greater_or_equal"?'),
        ("<", '"less_than"?'),
        ("lt", '"less_than"?'),
        ("<=", '"less_or_equal"?'),
        ("==", '"equals"?'),
        ("!=", '"equals" with "negate": true?'),
        ("not_in", '"in" with "negate": true?'),
        ("regex", '"matches_regex"?'),
        ("startswith", '"starts_with"?'),
        ("contain", '"contains"?'),
    ],
)
def test_unknown_operators_get_a_suggestion_and_the_list(operator, suggestion):
    condition = {"variable": "value", "operator": operator, "value": 1}
    [found] = problems(base(triggers=[{"name": "purchase", "conditions": [condition]}]))
    assert found.startswith(f'triggers[0].conditions[0].operator: unknown operator "{operator}"')
    assert f"did you mean {suggestion}" in found
    assert found.endswith("less_or_equal, in, in_cidr)")


def test_builtins_are_suggested_for_misspelt_variables():
    condition = {"variable": "client_pi", "operator": "equals", "value": "x"}
    tag = {"name": "log", "type": "log", "fire_on": ["t"],
           "params": {"message": "{{event_nme}} {{currnecy}}"}}  # fmt: skip
    found = problems(base(triggers=[{"name": "t", "conditions": [condition]}], tags=[tag]))
    assert found == [
        'triggers[0].conditions[0].variable: no variable named "client_pi" — did you mean '
        '"client_ip"?',
        'tags[0].params.message: no variable named "event_nme" — did you mean "event_name"?',
        'tags[0].params.message: no variable named "currnecy" — did you mean "currency"?',
    ]


def test_json_syntax_error_has_line_and_column(tmp_path):
    path = tmp_path / "container.json"
    path.write_text('{\n  "name": "x",\n  "tags": [,]\n}')
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert "line 3, column" in result.stdout


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"clients": [{"name": "c", "type": "event_api"}]},
            'clients[0].type: unknown client type "event_api" — did you mean "events_api"?',
        ),
        (
            {"variables": [{"name": "v", "type": "cokie", "cookie": "x"}]},
            'variables[0].type: unknown variable type "cokie" — did you mean "cookie"?',
        ),
        (
            {"variables": [{"name": "v", "type": "cookie"}]},
            "variables[0].cookie: required parameter",
        ),
        (
            {
                "variables": [
                    {"name": "v", "type": "constant", "value": 1},
                    {"name": "v", "type": "constant", "value": 2},
                ]
            },
            'variables[1].name: duplicate name "v"',
        ),
        (
            {"variables": [{"name": "event_name", "type": "constant", "value": 1}]},
            "built-in variable",
        ),
        (
            {
                "variables": [
                    {
                        "name": "v",
                        "type": "regex_table",
                        "input": "{{page_path}}",
                        "table": [{"pattern": "(", "value": 1}],
                    }
                ]
            },
            "variables[0].table[0].pattern: invalid regular expression",
        ),
        (
            {
                "variables": [
                    {"name": "a", "type": "lookup_table", "input": "{{b}}", "table": {}},
                    {"name": "b", "type": "constant", "value": "{{a}}"},
                ]
            },
            "reference cycle: a → b → a",
        ),
        (
            {"variables": [{"name": "v", "type": "constant", "value": "{{nope}}"}]},
            'variables[0].value: no variable named "nope"',
        ),
        (
            {
                "triggers": [
                    {
                        "name": "purchase",
                        "event": "purchase",
                        "conditions": [{"variable": "value", "operator": "bigger", "value": 1}],
                    }
                ]
            },
            'operator: unknown operator "bigger"',
        ),
        (
            {
                "triggers": [
                    {
                        "name": "purchase",
                        "event": "purchase",
                        "conditions": [
                            {"variable": "value", "operator": "greater_than", "value": "ten"}
                        ],
                    }
                ]
            },
            "needs a number",
        ),
        (
            {
                "triggers": [
                    {
                        "name": "purchase",
                        "event": "purchase",
                        "conditions": [
                            {"variable": "client_ip", "operator": "in_cidr", "value": "10.0.0.0/33"}
                        ],
                    }
                ]
            },
            "not an IP network",
        ),
        (
            {
                "triggers": [
                    {
                        "name": "purchase",
                        "event": "purchase",
                        "conditions": [
                            {"variable": "page_path", "operator": "matches_regex", "value": "[a-"}
                        ],
                    }
                ]
            },
            "invalid regular expression",
        ),
        ({"tags": [{"name": "log", "type": "log", "fire_on": []}]}, "tags[0].fire_on: required"),
        (
            {"tags": [{"name": "log", "type": "log", "fire_on": ["purchase"], "consent": ["ads"]}]},
            'tags[0].consent[0]: unknown consent type "ads"',
        ),
        (
            {
                "tags": [
                    {"name": "log", "type": "log", "fire_on": ["purchase"], "params": {"level": 3}}
                ]
            },
            "tags[0].params.level: expected string, got number",
        ),
        (
            {
                "tags": [
                    {
                        "name": "log",
                        "type": "log",
                        "fire_on": ["purchase"],
                        "params": {"level": "loud"},
                    }
                ]
            },
            "'loud' is not one of",
        ),
        (
            {
                "tags": [
                    {
                        "name": "log",
                        "type": "log",
                        "fire_on": ["purchase"],
                        "params": {"mesage": "x"},
                    }
                ]
            },
            'tags[0].params.mesage: tag "log" has no parameter "mesage" — did you mean "message"?',
        ),
        (
            {
                "tags": [
                    {
                        "name": "log",
                        "type": "log",
                        "fire_on": ["purchase"],
                        "params": {"message": "{{nope}}"},
                    }
                ]
            },
            'tags[0].params.message: no variable named "nope"',
        ),
        (
            {"tags": [{"name": "log", "type": "log", "fire_on": ["purchase"], "paused": "yes"}]},
            "tags[0].paused: must be true or false",
        ),
        ({"consent_mode": "lenient"}, 'consent_mode: must be "basic" or "strict"'),
        ({"tagz": []}, 'tagz: unknown field "tagz" — did you mean "tags"?'),
    ],
)
def test_each_validation_rule(change, expected):
    found = problems(base(**change))
    assert any(expected in p for p in found), found


def test_templated_values_are_accepted_in_typed_params():
    assert (
        problems(
            base(
                tags=[
                    {
                        "name": "log",
                        "type": "log",
                        "fire_on": ["purchase"],
                        "params": {"include_event": "{{order_value}}"},
                    }
                ]
            )
        )
        == []
    )


def test_load_refuses_invalid_container_with_all_problems():
    with pytest.raises(ContainerError) as info:
        load(base(tags=[{"name": "x", "type": "nope", "fire_on": ["nope"]}]), REGISTRY, Settings())
    assert len(info.value.problems) == 2


def test_parse_json_reports_position():
    with pytest.raises(ContainerError, match="line 1, column 2"):
        parse_json("{x}")


def test_schema_lists_registered_types_and_params():
    result = run_cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    tag_variants = schema["properties"]["tags"]["items"]["oneOf"]
    log_variant = next(v for v in tag_variants if v["properties"]["type"] == {"const": "log"})
    assert "message" in log_variant["properties"]["params"]["properties"]
    client_types = [
        v["properties"]["type"]["const"] for v in schema["properties"]["clients"]["items"]["oneOf"]
    ]
    assert "events_api" in client_types


def test_default_container_matches_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(run_cli("schema").stdout)
    with open(ROOT / "container.json") as f:
        jsonschema.validate(json.load(f), schema)


def test_lines_are_found_for_every_value_of_any_json():
    from hypothesis import given
    from hypothesis import strategies as st

    from tagserver.container.problems import value_lines

    values = st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=5), children, max_size=3)
        ),
        max_leaves=20,
    )

    @given(values)
    def check(value):
        text = json.dumps(value, indent=2)
        lines = value_lines(text)
        assert lines[()] == 1
        assert max(lines.values()) <= text.count("\n") + 1

    check()
