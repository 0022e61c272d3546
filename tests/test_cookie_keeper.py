"""The cookie keeper: other tools' cookies re-set by the server on its own hit responses, with
a long lifetime, only when configured, and never against the visitor's consent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from support import app_client, minimal_container

from tagserver.container.model import ContainerError, load
from tagserver.plugins import load_registry
from tagserver.settings import Settings

ORIGIN = "http://www.shop.test"
PAGE = {"page_location": "http://www.shop.test/", "page_title": "Shop"}
BROWSER_COOKIES = {
    "_ga": "GA1.1.1234567890.1700000000",
    "_ga_ABC123": "GS1.1.1700000000.1.0.1700000000.0.0.0",
    "_gcl_aw": "GCL.1700000000.Cj0KCQ",
    "_ttp": "2F7h37YkS1j57AYSKTI7IHhJPYH",
    "unrelated": "x",
}


def container(keeper: Any = None) -> dict[str, Any]:
    extra = {"cookie_keeper": keeper} if keeper is not None else {}
    return minimal_container(
        clients=[{"name": "collector", "type": "collector"}, {"name": "ga4", "type": "ga4"}],
        **extra,
    )


@pytest.fixture
def keeper_on(tmp_path: Path) -> Iterator[TestClient]:
    keeper = {"cookies": ["_ga", "_ga_*", "_gcl_aw", "_ttp"], "max_age_days": 395}
    with app_client(tmp_path, container(keeper)) as client:
        yield client


def collect(client: TestClient, consent: dict[str, str] | None = None) -> httpx.Response:
    body = {"pid": "3f2b8c1e-1d2f-4c4e-9a51-3f7a2b8c9d10", "consent": consent or {},
            "events": [{"name": "page_view", "id": "ev-1", "page": PAGE}]}  # fmt: skip
    client.cookies.clear()
    for name, value in BROWSER_COOKIES.items():
        client.cookies.set(name, value, domain="sgtm.shop.test")
    return client.post(
        "/collect", content=json.dumps(body),
        headers={"content-type": "text/plain;charset=UTF-8", "origin": ORIGIN},
    )  # fmt: skip


def set_cookies(response: httpx.Response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.headers.get_list("set-cookie")}


def test_off_by_default(tmp_path: Path) -> None:
    with app_client(tmp_path, container()) as client:
        r = collect(client)
    assert r.status_code == 200
    assert not {"_ga", "_ga_ABC123", "_gcl_aw"} & set(set_cookies(r))


def test_listed_cookies_are_re_set_with_a_long_lifetime(keeper_on: TestClient) -> None:
    cookies = set_cookies(collect(keeper_on))
    for name in ("_ga", "_ga_ABC123", "_gcl_aw"):
        assert cookies[name] == (
            f"{name}={BROWSER_COOKIES[name]}; Max-Age={395 * 86400}; Domain=shop.test; "
            "Path=/; SameSite=Lax"
        )
    assert "unrelated" not in cookies
    # _ttp is tagserver's own (the click-id rules renew it for 13 months): set once, not twice
    headers = collect(keeper_on).headers.get_list("set-cookie")
    assert len([h for h in headers if h.startswith("_ttp=")]) == 1
    assert cookies["_ttp"].startswith(f"_ttp={BROWSER_COOKIES['_ttp']}; Max-Age=34190000;")


def test_consent_decides_per_cookie(keeper_on: TestClient) -> None:
    cookies = set_cookies(collect(keeper_on, {"ad_storage": "denied"}))
    assert "_ga" in cookies and "_ga_ABC123" in cookies  # analytics cookies
    assert "_gcl_aw" not in cookies and "_ttp" not in cookies
    cookies = set_cookies(collect(keeper_on, {"analytics_storage": "denied"}))
    assert "_ga" not in cookies and "_ga_ABC123" not in cookies
    assert "_gcl_aw" in cookies


def test_ga4_hits_keep_them_too(keeper_on: TestClient) -> None:
    keeper_on.cookies.clear()
    keeper_on.cookies.set("_gcl_aw", BROWSER_COOKIES["_gcl_aw"], domain="sgtm.shop.test")
    r = keeper_on.get(
        "/g/collect?v=2&tid=G-TEST1&cid=555.1700000000&en=page_view&dl=http%3A%2F%2Fwww.shop.test%2F",
        headers={"origin": ORIGIN},
    )
    assert r.status_code == 204
    assert set_cookies(r)["_gcl_aw"].startswith(f"_gcl_aw={BROWSER_COOKIES['_gcl_aw']}; Max-Age=")


@pytest.mark.parametrize(
    ("keeper", "path", "message"),
    [
        ({"cookies": "_ga"}, "cookie_keeper.cookies", "must be a list"),
        ({"cookies": ["bad name"]}, "cookie_keeper.cookies[0]", "must be a cookie name"),
        ({"cookies": [{"name": "_ga", "consent": "maybe"}]}, "cookie_keeper.cookies[0].consent",
         "must be one of"),
        ({"cookies": ["_ga"], "max_age_days": 1000}, "cookie_keeper.max_age_days", "1 to 400"),
        ({"cookies": ["_ga"], "lifetime": 3}, "cookie_keeper.lifetime", "unknown field"),
    ],
)  # fmt: skip
def test_a_bad_keeper_is_refused_with_its_path(keeper: Any, path: str, message: str) -> None:
    with pytest.raises(ContainerError) as caught:
        load(container(keeper), load_registry(), Settings())
    assert any(p.path == path and message in p.message for p in caught.value.problems), (
        caught.value.problems
    )
