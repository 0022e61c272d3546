"""Settings: the core's dataclass plus the settings plugins declare, from `TAGSERVER_*`.

Every core field documents itself (env name, type, default, help), and so does every
`Setting` a plugin declares (`server_settings` on its Client or Tag class), so the README's
settings table and `tagserver settings` are generated from the code and cannot drift from it.
The CLI turns its flags into the same environment variables before starting uvicorn, so
every worker process builds identical settings.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

PREFIX = "TAGSERVER_"
T = TypeVar("T", bound=str | int | float | bool)
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def setting(default: Any, help: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "secret": secret})


class SettingsError(ValueError):
    """A `TAGSERVER_*` variable holds a value of the wrong shape."""


@dataclass(frozen=True)
class Setting(Generic[T]):
    """A server setting a plugin declares, read from `TAGSERVER_<NAME>` (pytest's
    `addoption`, Datasette's plugin config): the core never knows it by name.

        GRAPH_URL = Setting("meta_graph_url", "https://graph.facebook.com", "Graph API URL.")

        class MetaCapiTag(Tag):
            server_settings = (GRAPH_URL,)
            ...
            url = settings.get(GRAPH_URL)      # typed like the default: str here

    Its type is the default's (str, int, float or bool). `secret=True` values are redacted
    wherever they could show, and `tagserver settings` only says whether they are set.
    """

    name: str
    default: T
    help: str
    secret: bool = False

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"setting name {self.name!r}: use lower_case letters, digits, _")
        if not isinstance(self.default, (str, int, float, bool)):
            raise TypeError(f"setting {self.name}: the default must be a str, int, float or bool")

    @property
    def env(self) -> str:
        return PREFIX + self.name.upper()

    def parse(self, value: Any) -> T:
        """`value` (text from the environment, or a value given in code) as this type."""
        kind = type(self.default)
        if isinstance(value, str) and kind is not str:
            return cast(T, _convert(self.env, value, kind.__name__))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return cast(T, float(value))
        if type(value) is not kind:
            raise SettingsError(f"{self.env}: expected {kind.__name__}, got {value!r}")
        return value


@dataclass
class Settings:
    # -- server
    host: str = setting("127.0.0.1", "Address to listen on (`0.0.0.0` behind a proxy).")
    port: int = setting(8080, "Port to listen on.")
    workers: int = setting(1, "Worker processes (they share the data dir safely).")
    container: str = setting("container.json", "Path of the container file (hot-reloaded).")
    data_dir: str = setting("data", "Directory for the outbox, preview store and secret key.")
    reload_interval: float = setting(1.0, "Seconds between checks of the container file.")
    keep_alive_seconds: float = setting(
        75.0,
        "How long an idle HTTP connection stays open. Longer than a reverse proxy's own idle "
        "timeout (nginx's 60 s): else the proxy may send a hit on a connection the server is "
        "closing, and the hit fails.",
    )
    access_log: bool = setting(False, "Per-request access log (costs throughput).")
    log_level: str = setting("info", "Log level: debug, info, warning, error.")
    trusted_proxies: str = setting(
        "127.0.0.1/32,::1/128",
        "Comma-separated CIDRs whose `X-Forwarded-For`/`X-Forwarded-Proto` are believed.",
    )
    root_path: str = setting(
        "",
        "Path prefix tagserver is served under on the site's own origin (e.g. `/tag` behind the "
        "site's reverse proxy); requests with or without it are served the same.",
    )
    max_body_bytes: int = setting(1_048_576, "Largest accepted request body; larger gets 413.")
    max_events_per_request: int = setting(500, "Most events one request may carry.")
    secret_key: str = setting(
        "", "Key for signed cookies; generated once into the data dir when empty.", secret=True
    )
    # -- cookies / collector
    cookie_domain: str = setting("", "Cookie Domain; empty = registrable domain (eTLD+1).")
    cookie_max_age_days: int = setting(90, "Lifetime of `_fbp`/`_fbc` in days.")
    client_id_max_age_days: int = setting(400, "Lifetime of the HttpOnly client id cookie.")
    allowed_origins: str = setting(
        "",
        "Comma-separated origins allowed to send credentialed hits; empty = any origin under "
        "the server's registrable domain.",
    )
    collector_path: str = setting(
        "", "Extra path serving collector.js (a custom loader path ad blockers do not know)."
    )
    demo: bool = setting(True, "Serve the demo shop page at `/demo`.")
    # -- match quality: identity cookie, geography, event-id reuse
    identity_cookie_days: int = setting(
        30,
        "Lifetime of the encrypted identity cookie (a visitor's hashed match keys, kept with "
        "ad_user_data and ad_storage consent) from the last time the visitor identified; "
        "0 = never stored nor read.",
    )
    previous_secret_keys: str = setting(
        "",
        "Comma-separated former `TAGSERVER_SECRET_KEY` values: identity cookies sealed with "
        "them are still read (and re-sealed with the current key) while they live.",
        secret=True,
    )
    geo_country_headers: str = setting(
        "cf-ipcountry,x-appengine-country,cloudfront-viewer-country,x-vercel-ip-country",
        "Headers a trusted proxy puts the visitor's country in (first one present wins).",
    )
    geo_region_headers: str = setting(
        "cf-region-code,x-appengine-region,cloudfront-viewer-country-region,"
        "x-vercel-ip-country-region,cf-region",
        "Headers a trusted proxy puts the visitor's region (state) in.",
    )
    geo_city_headers: str = setting(
        "cf-ipcity,x-appengine-city,cloudfront-viewer-city,x-vercel-ip-city",
        "Headers a trusted proxy puts the visitor's city in.",
    )
    geo_postal_code_headers: str = setting(
        "cf-postal-code,cloudfront-viewer-postal-code,x-vercel-ip-postal-code",
        "Headers a trusted proxy puts the visitor's postal code in.",
    )
    geo_database: str = setting(
        "", "MaxMind-format database file (GeoIP2/GeoLite2 City or Country) for geography."
    )
    event_id_reuse_window_seconds: int = setting(
        172_800,
        "An event id seen again within this time for a different event (name, order id or "
        "value) is reported as reused (48 h: Meta's deduplication window); 0 = off.",
    )
    event_id_reuse_max_ids: int = setting(
        50_000, "Event ids each worker remembers for reuse detection (oldest forgotten)."
    )
    # -- delivery
    outbox_max_messages: int = setting(1_000_000, "Pending messages above which new hits get 503.")
    outbox_min_free_bytes: int = setting(
        64 * 1024 * 1024, "Free disk below which new hits get 503."
    )
    retry_base_seconds: float = setting(2.0, "First retry delay (exponential, full jitter).")
    retry_cap_seconds: float = setting(600.0, "Longest retry delay.")
    send_timeout_seconds: float = setting(30.0, "Timeout of one vendor request.")
    send_concurrency: int = setting(4, "Concurrent vendor requests per destination.")
    batch_linger_seconds: float = setting(
        0.05,
        "For tag types that send in batches: how long a destination whose last batch was far "
        "from full waits for more messages before sending (0 to 1 s; 0 = send at once).",
    )
    shutdown_grace_seconds: float = setting(10.0, "On SIGTERM, time allowed for in-flight sends.")
    outbox_lease_seconds: float = setting(
        60.0, "How long a worker holds the messages it claimed; a dead worker's return after it."
    )
    outbox_url: str = setting(
        "",
        "PostgreSQL URL (`postgresql://user:password@host:5432/db`) of an outbox shared by every "
        "instance; empty = the embedded SQLite outbox in the data dir.",
        secret=True,
    )
    outbox_timeout_seconds: float = setting(
        5.0, "Longest wait for the PostgreSQL outbox (connect, commit) before hits get 503."
    )
    outbox_pool_size: int = setting(8, "Connections each worker keeps to the PostgreSQL outbox.")
    outbox_sync: str = setting(
        "full",
        "SQLite `synchronous` for outbox commits: `full` survives power loss, `normal` only "
        "process crashes (faster on disks with slow fsync).",
    )
    # -- preview
    preview_password: str = setting(
        "", "Password for `/preview`; empty = a one-time token printed at start-up.", secret=True
    )
    preview_token_ttl_seconds: int = setting(3600, "Lifetime of a preview session token.")
    preview_max_hits: int = setting(1000, "Previewed hits kept in all (oldest dropped).")
    preview_max_hits_per_session: int = setting(200, "Previewed hits kept per session.")
    redis_url: str = setting(
        "", "Redis URL for the preview store when instances span machines.", secret=True
    )
    preview_store: str = setting(
        "",
        "SQLite file of the preview store; empty = in shared memory (/dev/shm) when available, "
        "else `preview.sqlite3` in the data dir. Unused when TAGSERVER_REDIS_URL is set.",
    )
    # -- monitoring
    alert_webhook_url: str = setting(
        "",
        'Slack-compatible webhook (`{"text": …}`) told once per incident when a destination '
        "starts dead-lettering, a vendor refuses a token, or a container edit is refused.",
        secret=True,
    )

    # values of plugin-declared settings given in code, by name: {"api_keys": "k1,k2"}
    plugin_settings: dict[str, Any] = field(default_factory=dict, repr=False)

    _environment: dict[str, str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )  # the TAGSERVER_* variables from_env saw that are not core fields: plugins' values
    _declared: dict[str, Setting[Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _values: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    _trusted: list[Any] = field(default_factory=list, init=False, repr=False, compare=False)
    _trusted_seen: dict[str, bool] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )  # peer address → trusted?, asked twice per hit: parsing it is the costly part

    def __post_init__(self) -> None:
        try:
            self._trusted = [
                ipaddress.ip_network(part.strip(), strict=False)
                for part in self.trusted_proxies.split(",")
                if part.strip()
            ]
        except ValueError as exc:
            raise SettingsError(f"{PREFIX}TRUSTED_PROXIES: {exc}") from None
        self.root_path = normal_root_path(self.root_path)
        url = self.outbox_url.strip()
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise SettingsError(
                f"{PREFIX}OUTBOX_URL: expected postgresql://user:password@host:port/database "
                "(or empty for the embedded SQLite outbox)"
            )
        if not 0 <= self.batch_linger_seconds <= 1:
            raise SettingsError(
                f"{PREFIX}BATCH_LINGER_SECONDS: expected 0 to 1 (seconds), "
                f"got {self.batch_linger_seconds}"
            )
        hook = self.alert_webhook_url.strip()
        if hook and not hook.startswith(("https://", "http://")):
            raise SettingsError(  # the value is a secret: not repeated here
                f"{PREFIX}ALERT_WEBHOOK_URL: expected an https:// URL (a Slack-compatible webhook)"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `TAGSERVER_*` variables, then `overrides` by name: core fields and
        plugin-declared settings alike (`Settings.from_env({}, api_keys="k")` reads no
        environment)."""
        env = os.environ if environ is None else environ
        core = core_setting_names()
        values: dict[str, Any] = {}
        plugin_values: dict[str, str] = {}
        for f in fields(cls):
            if not f.init or f.name not in core:
                continue
            name = PREFIX + f.name.upper()
            if name in env:
                values[f.name] = _convert(name, env[name], f.type)
        for name, raw in env.items():
            if name.startswith(PREFIX) and name[len(PREFIX) :].lower() not in core:
                plugin_values[name[len(PREFIX) :].lower()] = raw
        given = {k: v for k, v in overrides.items() if v is not None}
        values.update({k: v for k, v in given.items() if k in core})
        values["plugin_settings"] = {k: v for k, v in given.items() if k not in core}
        settings = cls(**values)
        settings._environment = plugin_values
        return settings

    # -- settings declared by plugins

    def declare(self, declared: Iterable[Setting[Any]]) -> None:
        """Know the settings of the installed plugins: every value is checked now (a bad one
        fails the start, not a hit), and secret ones are redacted like the core's."""
        self._declared = {s.name: s for s in declared}
        self._values.clear()
        for name in self.plugin_settings:
            if name not in self._declared:
                close = difflib.get_close_matches(name, [*self._declared, *core_setting_names()])
                hint = f" - did you mean {close[0]!r}?" if close else ""
                raise SettingsError(
                    f"{name}: no such setting (no installed plugin declares it){hint}"
                )
        for setting in self._declared.values():
            self.get(setting)

    def get(self, setting: Setting[T]) -> T:
        """The value of a plugin-declared setting: given in code, else from the environment,
        else its default."""
        try:
            return cast(T, self._values[setting.name])
        except KeyError:
            pass
        if setting.name in self.plugin_settings:
            value = setting.parse(self.plugin_settings[setting.name])
        elif setting.name in self._environment:
            value = setting.parse(self._environment[setting.name])
        else:
            value = setting.default
        self._values[setting.name] = value
        return value

    # -- derived values

    def is_trusted_proxy(self, ip: str) -> bool:
        known = self._trusted_seen.get(ip)
        if known is not None:
            return known
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        trusted = any(addr in net for net in self._trusted)
        if len(self._trusted_seen) < 4096:  # bounded: peers are few, but keep it safe
            self._trusted_seen[ip] = trusted
        return trusted

    @property
    def allowed_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()]

    @property
    def data_path(self) -> Path:
        path = Path(self.data_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def signing_key(self) -> str:
        """The configured key, or one generated once and shared by all workers via the data dir."""
        if self.secret_key:
            return self.secret_key
        key_file = self.data_path / "secret_key"
        if not key_file.exists():
            tmp = key_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(secrets.token_urlsafe(48))
            tmp.chmod(0o600)
            try:
                os.link(tmp, key_file)  # atomic: the first worker wins, the others read its key
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        return key_file.read_text().strip()

    def previous_signing_keys(self) -> list[str]:
        """Former secret keys, still accepted for reading what they sealed (rotation)."""
        return [k.strip() for k in self.previous_secret_keys.split(",") if k.strip()]

    def secret_values(self) -> list[str]:
        """Values that must be redacted wherever they could show."""
        values = [getattr(self, f.name) for f in fields(self) if f.metadata.get("secret")]
        values += [self.get(s) for s in self._declared.values() if s.secret]
        out = []
        for value in values:
            if value and isinstance(value, str):
                out.append(value)
                out.extend(p.strip() for p in value.split(",") if len(p.strip()) >= 4)
        return out


@cache
def core_setting_names() -> frozenset[str]:
    """The core's own settings (fields of `Settings`), which no plugin may declare again."""
    return frozenset(f.name for f in fields(Settings) if f.init and f.name != "plugin_settings")


ROOT_PATH_SCOPE_KEY = "tagserver.root_path"  # the ASGI scope key carrying TAGSERVER_ROOT_PATH


def normal_root_path(value: str) -> str:
    """`/tag/` and `tag` → `/tag`; `/` and empty → empty (served at the root)."""
    path = "/" + value.strip().strip("/")
    if path == "/":
        return ""
    if any(c in path for c in "?#%\\ ") or "//" in path or "/." in path:
        raise SettingsError(f"{PREFIX}ROOT_PATH: {value!r} is not a plain path like /tag")
    return path


def _convert(name: str, raw: str, type_name: Any) -> Any:
    type_name = str(type_name)
    try:
        if type_name == "bool":
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"expected true/false, got {raw!r}")
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None
    return raw


def core_settings() -> list[Setting[Any]]:
    """The core's settings described like a plugin's, for `tagserver settings` and the README."""
    out: list[Setting[Any]] = []
    for f in fields(Settings):
        if f.init and f.name in core_setting_names():
            default: Any = f.default
            out.append(Setting(f.name, default, f.metadata.get("help", ""), f.metadata["secret"]))
    return out


def shown_default(setting: Setting[Any]) -> str:
    """A default as the README and `tagserver settings` show it ("" for an empty one)."""
    default = setting.default
    if isinstance(default, bool):
        return str(default).lower()
    return "" if default == "" else str(default)
