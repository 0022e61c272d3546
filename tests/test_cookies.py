"""The first-party cookie rules of tagserver.visitor.cookies, one behaviour per test."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tagserver.event import RequestContext
from tagserver.settings import Settings
from tagserver.visitor import cookies

FBP = re.compile(r"fb\.(\d)\.(\d{13})\.(\d+)")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"))


def request(
    settings: Settings,
    host: str = "sgtm.shop.test",
    jar: dict[str, str] | None = None,
    *,
    scheme: str = "http",
    peer: str = "203.0.113.7",
    headers: dict[str, str] | None = None,
    at: float = 1_700_000_000.0,
) -> RequestContext:
    ctx = RequestContext.from_scope(
        method="POST",
        url=f"{scheme}://{host}/collect",
        path="/collect",
        query={},
        headers={"host": host, "user-agent": "Mozilla/5.0 Test", **(headers or {})},
        cookies=jar or {},
        peer_ip=peer,
        scheme=scheme,
        settings=settings,
    )
    ctx.received_at = at
    return ctx


def resolve(settings: Settings, ctx: RequestContext, **kwargs: Any) -> cookies.VisitorCookies:
    kwargs.setdefault("page_location", "https://www.shop.test/")
    kwargs.setdefault("consent", None)
    return cookies.visitor_cookies(ctx, settings, **kwargs)


def set_cookie(visitor: cookies.VisitorCookies, name: str) -> str | None:
    return next((v for v in visitor.set_cookie if v.startswith(name + "=")), None)


# -- _fbp -----------------------------------------------------------------------------------------


def test_fbp_generated_with_subdomain_index_and_millisecond_time(settings: Settings) -> None:
    visitor = resolve(settings, request(settings, "sgtm.shop.example.co.uk"))
    match = FBP.fullmatch(visitor.fbp or "")
    assert match, visitor.fbp
    assert match.group(1) == "2"  # example.co.uk: three labels
    assert abs(int(match.group(2)) - 1_700_000_000_000) <= 60_000
    assert visitor.event_keys()["x-fb-ck-fbp"] == visitor.fbp
    assert set_cookie(visitor, "_fbp") == (
        f"_fbp={visitor.fbp}; Max-Age={90 * 86400}; Domain=example.co.uk; Path=/; SameSite=Lax"
    )


def test_existing_fbp_is_kept_and_its_expiry_refreshed(settings: Settings) -> None:
    existing = "fb.1.1690000000000.123456789"
    visitor = resolve(settings, request(settings, jar={"_fbp": existing}))
    assert visitor.fbp == existing
    assert set_cookie(visitor, "_fbp").startswith(f"_fbp={existing}; Max-Age=7776000")


def test_fbp_with_appendix_is_accepted_unchanged(settings: Settings) -> None:
    existing = "fb.1.1690000000000.123456789.AQYBAQIA"
    assert resolve(settings, request(settings, jar={"_fbp": existing})).fbp == existing


@pytest.mark.parametrize(
    "bad", ["garbage", "fb.1.abc.123", "fb.1.1690000000000.12<script>", "fb.1.1690000000000", ""]
)
def test_malformed_fbp_is_replaced_never_forwarded(settings: Settings, bad: str) -> None:
    visitor = resolve(settings, request(settings, jar={"_fbp": bad}))
    assert visitor.fbp != bad and FBP.fullmatch(visitor.fbp or "")
    assert bad not in str(visitor.event_keys().values()) or not bad


# -- _fbc -----------------------------------------------------------------------------------------


def test_fbc_from_fbclid_keeps_case(settings: Settings) -> None:
    visitor = resolve(
        settings, request(settings), page_location="https://www.shop.test/?fbclid=AbC123"
    )
    assert re.fullmatch(r"fb\.1\.\d{13}\.AbC123", visitor.fbc or "")
    assert visitor.event_keys()["x-fb-ck-fbc"] == visitor.fbc
    assert set_cookie(visitor, "_fbc").startswith(
        f"_fbc={visitor.fbc}; Max-Age=7776000; Domain=shop.test"
    )


def test_no_fbclid_no_fbc(settings: Settings) -> None:
    visitor = resolve(settings, request(settings))
    assert visitor.fbc is None and set_cookie(visitor, "_fbc") is None
    assert "x-fb-ck-fbc" not in visitor.event_keys()


def test_same_click_id_is_never_re_timestamped(settings: Settings) -> None:
    existing = "fb.1.1690000000000.AbC123"
    visitor = resolve(
        settings,
        request(settings, jar={"_fbc": existing}, at=1_700_000_000),
        page_location="https://www.shop.test/p?fbclid=AbC123",
    )
    assert visitor.fbc == existing
    assert set_cookie(visitor, "_fbc").startswith(f"_fbc={existing};")  # expiry refreshed


def test_existing_fbc_kept_without_fbclid(settings: Settings) -> None:
    existing = "fb.1.1690000000000.AbC123.Bg"  # with an appendix
    assert resolve(settings, request(settings, jar={"_fbc": existing})).fbc == existing


def test_different_click_id_replaces_fbc(settings: Settings) -> None:
    visitor = resolve(
        settings,
        request(settings, jar={"_fbc": "fb.1.1690000000000.AbC123"}),
        page_location="https://www.shop.test/?fbclid=abc123",  # differs only in case
    )
    assert visitor.fbc and visitor.fbc.endswith(".abc123") and "1690000000000" not in visitor.fbc


def test_fbclid_over_500_characters_is_ignored(settings: Settings) -> None:
    long = "A" * 501
    visitor = resolve(
        settings, request(settings), page_location=f"https://www.shop.test/?fbclid={long}"
    )
    assert visitor.fbc is None
    ok = "B" * 500
    visitor = resolve(
        settings, request(settings), page_location=f"https://www.shop.test/?fbclid={ok}"
    )
    assert visitor.fbc and visitor.fbc.endswith("." + ok)


def test_fbclid_with_unsafe_characters_is_ignored(settings: Settings) -> None:
    for value in ("a.b", "a%3Bb", "a b", "x;Domain=evil"):
        location = f"https://www.shop.test/?fbclid={value}"
        assert resolve(settings, request(settings), page_location=location).fbc is None


def test_malformed_fbc_is_replaced_by_a_click_id(settings: Settings) -> None:
    visitor = resolve(
        settings,
        request(settings, jar={"_fbc": "fb.1.not-a-time.AbC123"}),
        page_location="https://www.shop.test/?fbclid=New1",
    )
    assert visitor.fbc and visitor.fbc.endswith(".New1")


def test_malformed_fbc_without_click_id_is_ignored_not_forwarded(settings: Settings) -> None:
    visitor = resolve(settings, request(settings, jar={"_fbc": "fb.1.1690000000000.bad;value"}))
    assert visitor.fbc is None and "x-fb-ck-fbc" not in visitor.event_keys()
    assert set_cookie(visitor, "_fbc") is None


# -- client id ------------------------------------------------------------------------------------


def test_client_id_cookie_is_http_only_and_stable(settings: Settings) -> None:
    first = resolve(settings, request(settings))
    assert re.fullmatch(r"\d+\.\d{10}", first.client_id or "")
    header = set_cookie(first, "tagserver_cid")
    assert header and header.endswith("; HttpOnly") and f"Max-Age={400 * 86400}" in header
    later = resolve(
        settings, request(settings, jar={"tagserver_cid": first.client_id}, at=1_800_000_000)
    )
    assert later.client_id == first.client_id


def test_client_id_cookie_name_and_opt_out(settings: Settings) -> None:
    visitor = resolve(settings, request(settings), client_id_cookie="my_id")
    assert set_cookie(visitor, "my_id") and not set_cookie(visitor, "tagserver_cid")
    visitor = resolve(settings, request(settings), client_id_cookie=None)
    assert visitor.client_id is None and "client_id" not in visitor.event_keys()


# -- domain, Secure, lifetime ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "domain", "index"),
    [
        ("sgtm.shop.example.co.uk", "example.co.uk", "2"),
        ("sgtm.shop.test", "shop.test", "1"),
        ("Example.COM", "example.com", "1"),
        ("127.0.0.1:8080", None, "0"),
        ("[::1]:8080", None, "0"),
        ("localhost:8080", None, "0"),
        ("app.localhost", None, "0"),
        ("co.uk", None, "0"),
    ],
)
def test_cookie_domain(settings: Settings, host: str, domain: str | None, index: str) -> None:
    visitor = resolve(settings, request(settings, host))
    header = set_cookie(visitor, "_fbp") or ""
    if domain:
        assert f"; Domain={domain};" in header
    else:
        assert "Domain=" not in header
    assert visitor.fbp and visitor.fbp.split(".")[1] == index


def test_configured_cookie_domain(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), cookie_domain=".shop.example.co.uk")
    visitor = resolve(settings, request(settings, "sgtm.shop.example.co.uk"))
    assert "; Domain=shop.example.co.uk;" in set_cookie(visitor, "_fbp")
    assert visitor.fbp.startswith("fb.3.")
    # a host outside the configured domain falls back to its registrable domain
    other = resolve(settings, request(settings, "sgtm.other.test"))
    assert "; Domain=other.test;" in set_cookie(other, "_fbp")


def test_secure_on_https_and_trusted_forwarded_proto(settings: Settings) -> None:
    assert set_cookie(resolve(settings, request(settings, scheme="https")), "_fbp").endswith(
        "; Secure"
    )
    assert "Secure" not in set_cookie(resolve(settings, request(settings)), "_fbp")
    proxied = request(settings, peer="127.0.0.1", headers={"x-forwarded-proto": "https"})
    assert set_cookie(resolve(settings, proxied), "_fbp").endswith("; Secure")
    spoofed = request(settings, peer="203.0.113.9", headers={"x-forwarded-proto": "https"})
    assert "Secure" not in set_cookie(resolve(settings, spoofed), "_fbp")


def test_lifetimes_come_from_settings(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), cookie_max_age_days=30, client_id_max_age_days=7)
    visitor = resolve(settings, request(settings), page_location="https://w.shop.test/?fbclid=x")
    assert f"Max-Age={30 * 86400};" in set_cookie(visitor, "_fbp")
    assert f"Max-Age={30 * 86400};" in set_cookie(visitor, "_fbc")
    assert f"Max-Age={7 * 86400};" in set_cookie(visitor, "tagserver_cid")


# -- consent --------------------------------------------------------------------------------------


def test_ad_storage_denied_sets_and_extends_nothing(settings: Settings) -> None:
    jar = {"_fbp": "fb.1.1690000000000.1", "_fbc": "fb.1.1690000000000.AbC123"}
    for denied in ("denied", False, "DENIED"):
        visitor = resolve(
            settings,
            request(settings, jar=jar),
            page_location="https://www.shop.test/?fbclid=New",
            consent={"ad_storage": denied},
        )
        assert not set_cookie(visitor, "_fbp") and not set_cookie(visitor, "_fbc")
        assert visitor.fbp is None and visitor.fbc is None
        assert set_cookie(visitor, "tagserver_cid")  # analytics_storage not denied


def test_analytics_storage_denied_leaves_client_id_alone(settings: Settings) -> None:
    visitor = resolve(
        settings,
        request(settings, jar={"tagserver_cid": "1.1690000000"}),
        consent={"analytics_storage": "denied", "ad_storage": "granted"},
    )
    assert visitor.client_id is None and not set_cookie(visitor, "tagserver_cid")
    assert visitor.fbp and set_cookie(visitor, "_fbp")


def test_granted_or_absent_consent_sets_cookies(settings: Settings) -> None:
    for consent in (None, {}, {"ad_storage": "granted"}, {"ad_storage": True}):
        assert set_cookie(resolve(settings, request(settings), consent=consent), "_fbp")


# -- parallel first hits --------------------------------------------------------------------------


def test_same_seed_gives_the_same_values_whenever_it_arrives(settings: Settings) -> None:
    seed, load = "0b6a2c1e-5d2f-4c4e-9a51-3f7a2b8c9d10", 1_700_000_000_123
    a = resolve(settings, request(settings, at=1_700_000_000.5), seed=seed, seed_ms=load)
    b = resolve(
        settings,
        request(settings, at=1_700_000_059.9, peer="198.51.100.4"),
        seed=seed,
        seed_ms=load,
    )
    assert a.fbp == b.fbp and a.client_id == b.client_id
    assert a.fbp.split(".")[2] == str(load)  # creation time = the page's load time
    c = resolve(settings, request(settings), seed="another-page-id-1234", seed_ms=load)
    assert c.fbp != a.fbp and c.client_id != a.client_id


def test_fbc_for_the_same_click_is_identical_in_parallel_hits(settings: Settings) -> None:
    kwargs = {"seed": "page-id-12345678", "seed_ms": 1_700_000_000_000,
              "page_location": "https://www.shop.test/?fbclid=AbC123"}  # fmt: skip
    a = resolve(settings, request(settings, at=1_700_000_001), **kwargs)
    b = resolve(settings, request(settings, at=1_700_000_002), **kwargs)
    assert a.fbc == b.fbc == "fb.1.1700000000000.AbC123"


def test_implausible_seed_time_is_not_believed(settings: Settings) -> None:
    visitor = resolve(settings, request(settings), seed="page-id-12345678", seed_ms=42)
    assert abs(int(visitor.fbp.split(".")[2]) - 1_700_000_000_000) <= 60_000


def test_without_seed_same_visitor_same_minute_same_value(settings: Settings) -> None:
    at = 1_700_000_040.0  # a minute starts exactly here
    a = resolve(settings, request(settings, at=at))
    b = resolve(settings, request(settings, at=at + 0.25))
    assert a.fbp == b.fbp and a.client_id == b.client_id
    other_ip = resolve(settings, request(settings, at=at, peer="198.51.100.4"))
    other_ua = resolve(settings, request(settings, at=at, headers={"user-agent": "Other/1.0"}))
    assert len({a.fbp, other_ip.fbp, other_ua.fbp}) == 3


def test_values_depend_on_the_signing_key(tmp_path: Path) -> None:
    one = Settings(data_dir=str(tmp_path / "a"), secret_key="key-one-0123456789")
    two = Settings(data_dir=str(tmp_path / "b"), secret_key="key-two-0123456789")
    kwargs = {"seed": "page-id-12345678", "seed_ms": 1_700_000_000_000}
    assert resolve(one, request(one), **kwargs).fbp != resolve(two, request(two), **kwargs).fbp


def test_apply_adds_every_set_cookie_header(settings: Settings) -> None:
    from starlette.responses import Response

    visitor = resolve(settings, request(settings), page_location="https://w.shop.test/?fbclid=x")
    response = cookies.apply(Response(), visitor)
    values = [v.decode() for k, v in response.raw_headers if k == b"set-cookie"]
    assert values == visitor.set_cookie and len(values) == 3
