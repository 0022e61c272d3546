"""Settings as an operator and a plugin author see them: `tagserver settings`, `serve --help`,
and settings a third-party plugin declares for itself."""

from __future__ import annotations

import os
import textwrap

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient
from support import app_client, minimal_container, write_container

from tagserver import Setting, Settings, SettingsError
from tagserver.cli.main import main
from tagserver.web.app import create_app

SECRET = "acme-token-0123456789"

PLUGIN = textwrap.dedent("""
    from tagserver import Setting, Tag, TagRejected

    WORD = Setting("acme_word", "hey", "Word the acme tag answers with.")
    TIMES = Setting("acme_times", 1, "How many times.")
    TOKEN = Setting("acme_token", "", "Acme API token.", secret=True)


    class EchoTag(Tag):
        type_name = "acme_echo"
        server_settings = (WORD, TIMES, TOKEN)

        def fire(self, event, params, ctx):
            word, times = self.settings.get(WORD), self.settings.get(TIMES)
            raise TagRejected(f"echo {'-'.join([word] * times)}")


    class GreedyTag(Tag):
        type_name = "acme_greedy"
        server_settings = (Setting("port", 1, "a core setting"), WORD)
""")


@pytest.fixture
def acme(tmp_path, monkeypatch):
    """A third-party distribution with a tag that declares settings, on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_settings_tags.py").write_text(PLUGIN)
    dist = site / "acme_settings_tags-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-settings\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[tagserver.tags]\n"
        "acme_echo = acme_settings_tags:EchoTag\n"
        "acme_greedy = acme_settings_tags:GreedyTag\n"
    )
    monkeypatch.syspath_prepend(str(site))
    for name in [n for n in os.environ if n.startswith("TAGSERVER_")]:
        monkeypatch.delenv(name)
    return site


def settings_output(*args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(main, ["settings", *args], env=env or {})
    assert result.exit_code == 0, result.output
    return result.output


def line_of(output: str, variable: str) -> str:
    return next(line for line in output.splitlines() if line.strip().startswith(variable + " "))


def test_settings_shows_effective_values_and_where_they_come_from(acme):
    output = settings_output(
        "--port", "9001", env={"TAGSERVER_HOST": "0.0.0.0", "TAGSERVER_PORT": "9000"}
    )
    assert line_of(output, "TAGSERVER_PORT").split()[1:] == ["9001", "flag,", "default", "8080"]
    assert line_of(output, "TAGSERVER_HOST").split()[1:3] == ["0.0.0.0", "environment,"]
    assert line_of(output, "TAGSERVER_WORKERS").split()[1:] == ["1", "default"]
    assert line_of(output, "TAGSERVER_COOKIE_DOMAIN").split()[1:] == ["(empty)", "default"]


def test_secrets_show_only_whether_they_are_set(acme):
    output = settings_output(
        env={"TAGSERVER_API_KEYS": "key-one,key-two", "TAGSERVER_ACME_TOKEN": SECRET}
    )
    assert line_of(output, "TAGSERVER_API_KEYS").split()[1:] == ["set", "environment"]
    assert line_of(output, "TAGSERVER_ACME_TOKEN").split()[1:] == ["set", "environment"]
    assert line_of(output, "TAGSERVER_PREVIEW_PASSWORD").split()[1:] == ["not", "set", "default"]
    assert "key-one" not in output and SECRET not in output


def test_settings_are_grouped_by_the_plugin_that_declares_them(acme):
    output = settings_output(env={"TAGSERVER_ACME_TIMES": "3"})
    groups = [line for line in output.splitlines() if line.startswith("[")]
    assert groups[0] == "[core]"
    assert {"[client events_api]", "[tag ga4]", "[tag meta_capi]", "[tag acme_echo]"} <= set(groups)
    section = output.split("[tag acme_echo]\n", 1)[1].split("\n[", 1)[0]
    assert [line.split()[0] for line in section.splitlines()] == [
        "TAGSERVER_ACME_WORD", "TAGSERVER_ACME_TIMES", "TAGSERVER_ACME_TOKEN",
    ]  # fmt: skip
    assert line_of(output, "TAGSERVER_ACME_TIMES").split()[1:3] == ["3", "environment,"]
    assert "TAGSERVER_META_GRAPH_URL" in output.split("[tag meta_capi]", 1)[1]
    markdown = settings_output("--markdown")
    assert "#### `acme_echo` tag" in markdown
    assert "| `TAGSERVER_ACME_TIMES` | `1` | How many times. |" in markdown


def test_a_plugin_may_not_declare_a_core_setting_or_another_plugins(acme):
    result = CliRunner().invoke(main, ["settings"], env={})
    assert "tag acme_greedy: setting TAGSERVER_PORT is a core setting" in result.output
    assert "tag acme_greedy: setting TAGSERVER_ACME_WORD is declared by tag acme_echo" not in (
        result.output
    )  # the very same declaration, shared: fine


def test_a_bad_value_of_a_plugin_setting_stops_the_command_with_its_name(acme):
    result = CliRunner().invoke(main, ["settings"], env={"TAGSERVER_ACME_TIMES": "many"})
    assert result.exit_code == 1
    assert "TAGSERVER_ACME_TIMES: invalid literal for int()" in result.output


def test_serve_help_shows_the_defaults():
    result = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "[env: TAGSERVER_HOST; default: 127.0.0.1]" in result.output
    assert "[env: TAGSERVER_PORT; default: 8080]" in result.output
    assert "[env: TAGSERVER_DATA_DIR; default: data]" in result.output
    assert "[env: TAGSERVER_ACCESS_LOG; default: false]" in result.output


def test_a_third_party_tag_reads_its_own_setting_given_in_code(tmp_path, acme):
    container = minimal_container(tags=[{"name": "echo", "type": "acme_echo", "fire_on": ["all"]}])
    with app_client(tmp_path, container, acme_word="ho", acme_times=3) as client:
        answer = client.post(
            "/api/events", json={"event_name": "e"}, headers={"Authorization": "Bearer test-key"}
        )
    assert answer.status_code == 200
    assert "echo ho-ho-ho" in answer.json()["results"][0]["tags_not_fired"]["echo"]


def test_a_third_party_tag_reads_its_own_setting_from_the_environment(tmp_path, acme):
    container = minimal_container(tags=[{"name": "echo", "type": "acme_echo", "fire_on": ["all"]}])
    env = {
        "TAGSERVER_ACME_WORD": "ha",
        "TAGSERVER_ACME_TIMES": "2",
        "TAGSERVER_ACME_TOKEN": SECRET,
        "TAGSERVER_API_KEYS": "test-key",
    }
    settings = Settings.from_env(
        env, container=str(write_container(tmp_path, container)), data_dir=str(tmp_path / "d")
    )
    with TestClient(create_app(settings)) as client:
        answer = client.post(
            "/api/events", json={"event_name": "e"}, headers={"Authorization": "Bearer test-key"}
        )
    assert "echo ha-ha" in answer.json()["results"][0]["tags_not_fired"]["echo"]
    assert SECRET in settings.secret_values()  # declared secret: redacted wherever it could show


def test_an_unknown_plugin_setting_given_in_code_is_refused_with_a_suggestion(tmp_path, acme):
    with (
        pytest.raises(
            SettingsError, match="acme_wrod: no such setting .* did you mean 'acme_word'"
        ),
        app_client(tmp_path, minimal_container(), acme_wrod="x"),
    ):
        pass


def test_setting_values_are_typed_like_their_default():
    times = Setting("acme_times", 1, "")
    flag = Setting("acme_flag", False, "")
    ratio = Setting("acme_ratio", 0.5, "")
    settings = Settings.from_env(
        {"TAGSERVER_ACME_TIMES": "7", "TAGSERVER_ACME_FLAG": "yes"}, acme_ratio=2
    )
    assert settings.get(times) == 7 and settings.get(flag) is True
    assert settings.get(ratio) == 2.0 and isinstance(settings.get(ratio), float)
    assert Settings.from_env({}).get(times) == 1
    with pytest.raises(SettingsError, match="TAGSERVER_ACME_TIMES: expected int, got 3.5"):
        Settings.from_env({}, acme_times=3.5).get(times)
    with pytest.raises(SettingsError, match="TAGSERVER_ACME_TIMES: invalid literal"):
        Settings.from_env({"TAGSERVER_ACME_TIMES": "3.5x"}).get(times)
    with pytest.raises(ValueError, match="lower_case"):
        Setting("Acme-Times", 1, "")
