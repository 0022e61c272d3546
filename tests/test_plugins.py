"""A third-party plugin registered by entry point is picked up, validated and run."""

import json
import os
import subprocess
import sys
import textwrap

import httpx
from support import ServerProcess

PLUGIN = textwrap.dedent("""
    import logging
    from tagserver import Param, Tag

    class ShoutTag(Tag):
        type_name = "acme_shout"
        params = (Param("word", "string", required=True), Param("times", "integer", default=1))

        def fire(self, event, params, ctx):
            logging.getLogger("acme").warning("ACME %s", (params["word"] + "!") * params["times"])
            ctx.note("shouted", params["times"])
            return []
""")


def install_plugin(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "acme_tags.py").write_text(PLUGIN)
    dist = site / "acme_tags-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-tags\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[tagserver.tags]\nacme_shout = acme_tags:ShoutTag\nacme_broken = acme_tags:DoesNotExist\n"
    )
    return {**os.environ, "PYTHONPATH": str(site)}


def container(params):
    return {
        "name": "plugins",
        "clients": [{"name": "api", "type": "events_api"}],
        "triggers": [{"name": "all", "event": "*"}],
        "tags": [{"name": "shout", "type": "acme_shout", "fire_on": ["all"], "params": params}],
    }


def test_third_party_tag_is_validated_and_fires(tmp_path):
    env = install_plugin(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(container({"times": "three"})))
    result = subprocess.run(
        [sys.executable, "-m", "tagserver", "validate", str(bad)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1
    assert 'tags[0] "shout": params.times: expected integer, got string' in result.stdout
    assert (
        'tags[0] "shout": params.word: required parameter of tag "acme_shout" is missing'
        in result.stdout
    )
    assert "acme_broken" in result.stderr  # a broken plugin is reported, not fatal

    schema = subprocess.run(
        [sys.executable, "-m", "tagserver", "schema"], capture_output=True, text=True, env=env
    )
    assert '"acme_shout"' in schema.stdout

    with ServerProcess(
        tmp_path, container({"word": "hey", "times": 2}), env={"PYTHONPATH": env["PYTHONPATH"]}
    ) as server:
        response = httpx.post(
            server.url + "/api/events",
            json={"event_name": "e"},
            headers={"Authorization": "Bearer test-key"},
        )
        assert response.json()["results"][0]["tags_fired"] == ["shout"]
    assert "ACME hey!hey!" in server.logs()
