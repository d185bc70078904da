"""Configuration: a TOML file, overridden by MATRIX_<SECTION>__<KEY> environment variables.

Secrets may be written as "${ENV_NAME}" and are resolved from the environment at load
time; they are held as SecretStr so they never print, log or serialise.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigError
from .identity import owners

COMBOS = ("sse-sse", "sse-ws", "ws-sse", "ws-ws")
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def _resolve_env(value: Any) -> Any:
    """Replace a whole-string "${NAME}" by the environment variable NAME."""
    if isinstance(value, str) and (match := _ENV_REF.match(value)):
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    return value


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = 8080
    combo: Literal["", "sse-sse", "sse-ws", "ws-sse", "ws-ws"] = ""
    default_upstream: str = ""  # empty: the first configured upstream
    max_body_bytes: int = Field(64 * 1024, gt=0)
    max_ws_frame_bytes: int = Field(64 * 1024, gt=0)
    drain_timeout_s: float = Field(10.0, ge=0)
    header_timeout_s: float = Field(15.0, gt=0)  # request line + headers (and a body) must arrive by then
    # Origins (scheme://host[:port]) allowed for CORS and WS handshakes besides the relay's own.
    allowed_origins: list[str] = Field(default_factory=list)
    # -- TLS on the relay's own port: PEM files; none set serves plain HTTP (e.g. behind nginx)
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""  # set: every client must present a certificate signed by this CA (mutual TLS)

    @model_validator(mode="after")
    def _tls_files_together(self) -> "ServerConfig":
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        return self


class StreamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queue_size: int = Field(256, gt=0)
    heartbeat_s: float = Field(15.0, gt=0)
    upstream_idle_timeout_s: float = Field(60.0, gt=0)
    upstream_connect_timeout_s: float = Field(10.0, gt=0)
    disconnect_grace_s: float = Field(5.0, ge=0)
    replay_ttl_s: float = Field(300.0, ge=0)
    replay_max_events: int = Field(100_000, gt=0)
    send_timeout_s: float = Field(30.0, gt=0)
    client_send_buffer_bytes: int = Field(256 * 1024, ge=0)  # 0 leaves the kernel's autotuning
    retry_attempts: int = Field(3, ge=1)
    retry_budget_s: float = Field(10.0, ge=0)
    retry_backoff_s: float = Field(0.2, ge=0)


class LimitsConfig(BaseModel):
    """Abuse limits: each refusal is a clear 4xx / error event with a code, counted in metrics."""

    model_config = ConfigDict(extra="forbid")
    max_messages: int = Field(200, gt=0)
    max_message_chars: int = Field(32_000, gt=0)
    max_streams_per_socket: int = Field(16, gt=0)
    max_streams_per_client: int = Field(64, gt=0)  # live streams per API key, or per IP without auth
    starts_per_minute: float = Field(600, gt=0)  # token bucket per API key / IP
    burst: int = Field(60, gt=0)
    # Load shedding (matrix/overload.py): past either, new streams get 503 `overloaded` and /readyz 503.
    max_active_streams: int = Field(0, ge=0)  # live provider connections on this relay; 0: no limit
    max_loop_lag_ms: float = Field(200, ge=0)  # the event loop behind by this much, sustained; 0: off
    overload_retry_after_s: int = Field(1, ge=0)  # the refusal's Retry-After


class EngineConfig(BaseModel):
    """Where streams live: this process (`memory`), or Redis shared by many relays (`redis`)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["memory", "redis"] = "memory"
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")  # may carry a password: "${REDIS_URL}"
    prefix: str = Field("matrix:", min_length=1, max_length=64)  # every key and channel starts with it
    owner_lease_s: float = Field(3.0, ge=0.2)  # a relay silent this long is dead: its streams end relay_lost
    flush_interval_ms: float = Field(1.0, ge=0)  # at most one Redis write per interval (all streams in it); text between merges
    timeout_s: float = Field(2.0, gt=0)  # Redis silent this long is unavailable: refuse, end live streams

    @field_validator("url", mode="before")
    @classmethod
    def _resolve_url(cls, value: Any) -> Any:
        return _resolve_env(value)

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr) -> SecretStr:
        if urlsplit(value.get_secret_value()).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value


class StoreConfig(BaseModel):
    """Where conversations are kept: an SQLite file (the default, nothing to run) or PostgreSQL (many relays)."""

    model_config = ConfigDict(extra="forbid")
    # sqlite:///matrix.db is relative to the working directory, sqlite:////var/lib/matrix.db absolute;
    # postgresql://user:password@host:5432/db may carry a password: "${DATABASE_URL}".
    url: SecretStr = SecretStr("sqlite:///matrix.db")
    history_messages: int = Field(20, ge=0, le=1000)  # stored messages sent before the new one (plus the system one)
    title_chars: int = Field(60, ge=8, le=200)  # a new conversation's title: the start of its first message
    timeout_s: float = Field(3.0, gt=0)  # connect, query or SQLite lock wait longer than this: store_unavailable

    _resolve = field_validator("url", mode="before")(classmethod(lambda cls, v: _resolve_env(v)))

    @field_validator("url")
    @classmethod
    def _store_scheme(cls, value: SecretStr) -> SecretStr:
        # Only the scheme is named in the message: the URL may carry a password.
        url = value.get_secret_value()
        parts = urlsplit(url)
        if parts.scheme not in ("sqlite", "postgresql"):
            raise ValueError("must be a sqlite:///PATH or postgresql://[user[:password]@]host[:port]/database URL"
                             f" (got scheme {parts.scheme[:20]!r})")
        if parts.scheme == "sqlite" and (not url.startswith("sqlite:///") or url[10:] in ("", ":memory:")):
            raise ValueError("a sqlite URL names a file: sqlite:///relative/path.db or sqlite:////absolute/path.db")
        if parts.scheme == "postgresql" and not parts.hostname and "host=" not in parts.query:
            raise ValueError("a postgresql URL names a host: postgresql://[user[:password]@]host[:port]/database")
        return value


class AuthConfig(BaseModel):
    """Client auth: off while no key is configured (the demo), on as soon as one is.

    `keys`: each key a client of its own, known by the key's fingerprint. `clients`: named
    clients (`webapp = "${KEY}"`, or a list of keys: an old and a new one during a
    rotation are the same client). See matrix/identity.py for what owns a stream.
    """

    model_config = ConfigDict(extra="forbid")
    keys: list[SecretStr] = Field(default_factory=list)
    clients: dict[str, list[SecretStr]] = Field(default_factory=dict)
    ticket_ttl_s: float = Field(60, gt=0)

    @field_validator("keys", mode="before")
    @classmethod
    def _resolve_keys(cls, value: Any) -> Any:
        return [_resolve_env(k) for k in value] if isinstance(value, list) else value

    @field_validator("clients", mode="before")
    @classmethod
    def _resolve_clients(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {name: [_resolve_env(k) for k in (keys if isinstance(keys, list) else [keys])]
                for name, keys in value.items()}

    @model_validator(mode="after")
    def _one_client_per_key(self) -> "AuthConfig":
        for name, keys in self.clients.items():
            if not _CLIENT_NAME.match(name):
                raise ValueError(f"auth.clients: a client name is 1-64 of A-Z a-z 0-9 _ . - (got {name[:64]!r})")
            if not keys:
                raise ValueError(f"auth.clients.{name} has no key")
        if any(not k.get_secret_value() for k in [*self.keys, *(k for ks in self.clients.values() for k in ks)]):
            raise ValueError("auth: an empty key would let anyone in")
        owners(*self.secrets())  # raises on a key given to two clients
        return self

    def secrets(self) -> tuple[list[str], dict[str, list[str]]]:
        """The keys in clear, for matrix/identity.py: `keys` and `clients`."""
        return ([k.get_secret_value() for k in self.keys],
                {name: [k.get_secret_value() for k in keys] for name, keys in self.clients.items()})


class LogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class UpstreamConfig(BaseModel):
    """`[upstreams.NAME]`: what every kind shares.

    Each vendor's dialect module subclasses this with its own fields, its `kind` literal
    and its `transport`, and registers the subclass with `register_kind`; this module
    names no vendor.
    """

    model_config = ConfigDict(extra="forbid")
    transport: ClassVar[str] = ""  # "sse" or "ws", set by the vendor's subclass
    kind: str
    url: str
    # -- network: TLS and proxy (every kind)
    ca_file: str = ""  # PEM bundle trusted in addition to the system's (and SSL_CERT_FILE / SSL_CERT_DIR)
    verify: bool = True  # false: no certificate check at all, for a lab; warned about at start-up
    client_cert: str = ""  # PEM certificate (chain) for providers that require mutual TLS
    client_key: str = ""  # its PEM private key file
    client_key_password: SecretStr = SecretStr("")  # when client_key is encrypted
    # Unset: HTTPS_PROXY / HTTP_PROXY / NO_PROXY decide; "": never a proxy; "http://[user:pass@]host:port".
    proxy: SecretStr | None = None

    @model_validator(mode="after")
    def _network(self) -> "UpstreamConfig":
        if bool(self.client_cert) != bool(self.client_key):
            raise ValueError("client_cert and client_key go together")
        if self.proxy is not None and self.proxy.get_secret_value():
            # Checked here so a bad value stops the start, and named without its value:
            # a proxy URL may carry credentials.
            parts = urlsplit(self.proxy.get_secret_value())
            try:
                parts.port
            except ValueError:
                raise ValueError("proxy has an invalid port") from None
            if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
                raise ValueError("proxy must be http://[user:password@]host:port")
        return self

    _resolve = field_validator("*", mode="before")(classmethod(lambda cls, v: _resolve_env(v)))

    @model_validator(mode="after")
    def _scheme_matches_kind(self) -> "UpstreamConfig":
        schemes = ("ws://", "wss://") if self.transport == "ws" else ("http://", "https://")
        if not self.url.startswith(schemes):
            # Only the scheme is named: the URL itself could carry a key in its query.
            raise ValueError(f"a {self.kind} url must start with {' or '.join(schemes)}")
        try:
            parts = urlsplit(self.url)
            parts.port  # raises on a port that is not a number in range
        except ValueError:
            raise ValueError(f"a {self.kind} url has an invalid host or port") from None
        if not parts.hostname:
            raise ValueError(f"a {self.kind} url has no host")
        return self

    def public(self, name: str) -> dict:
        """What `GET /v1/upstreams` shows: no secrets, no query string."""
        return {"name": name, "kind": self.kind, "transport": self.transport, "url": self.url.split("?")[0]}


_KINDS: dict[str, type[UpstreamConfig]] = {}


def register_kind(config: type[UpstreamConfig]) -> str:
    """Make `kind = "..."` in `[upstreams.NAME]` validate against `config`; returns the kind."""
    kind = config.model_fields["kind"].default
    if not isinstance(kind, str) or config.transport not in ("sse", "ws"):
        raise TypeError(f"{config.__name__} needs a default `kind` and a `transport` of 'sse' or 'ws'")
    if _KINDS.setdefault(kind, config) is not config:
        raise TypeError(f"upstream kind {kind!r} is registered twice")
    return kind


def _typed_upstream(name: str, raw: Any) -> UpstreamConfig:
    """One `[upstreams.NAME]` table, validated by its kind's model; errors name upstream, kind and field."""
    if isinstance(raw, UpstreamConfig):
        return raw
    if not isinstance(raw, dict):
        raise _config_error(f"upstreams.{name}: must be a table")
    kinds = ", ".join(_KINDS) or "none registered (import the upstreams package first)"
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        what = "kind is missing" if kind is None else f"unknown kind {str(kind)[:40]!r}"
        raise _config_error(f"upstreams.{name}: {what}; known kinds: {kinds}")
    model = _KINDS[kind]
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        own = ", ".join(f for f in model.model_fields if f not in UpstreamConfig.model_fields)
        problems = []
        for e in exc.errors(include_input=False, include_url=False):
            field = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                problems.append(f"{field}: not a field of kind {kind} (it takes {own or 'no fields of its own'}, "
                                f"besides url and the TLS and proxy fields)")
            elif e["type"] == "missing":
                problems.append(f"{field}: required for kind {kind}")
            else:  # a model-level check has no field: its message names what it checks
                problems.append(f"{field}: {e['msg']}" if field else e["msg"])
        raise _config_error(f"upstreams.{name} (kind {kind}): {'; '.join(problems)}") from None


def _config_error(text: str) -> PydanticCustomError:
    return PydanticCustomError("upstream_config", "{text}", {"text": text})  # `text` names its location


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MATRIX_", env_nested_delimiter="__", extra="forbid")

    server: ServerConfig = ServerConfig()
    stream: StreamConfig = StreamConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    log: LogConfig = LogConfig()
    engine: EngineConfig = EngineConfig()
    store: StoreConfig = StoreConfig()
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict)

    @field_validator("upstreams", mode="before")
    @classmethod
    def _by_kind(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        typed, problems = {}, []
        for name, raw in value.items():  # every upstream's problems at once, not the first only
            try:
                typed[name] = _typed_upstream(name, raw)
            except PydanticCustomError as exc:
                problems.append(exc.context["text"])  # type: ignore[index]
        if problems:
            raise _config_error("; ".join(problems))
        return typed

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if not self.upstreams:
            raise ValueError("at least one upstream must be configured")
        if self.server.default_upstream and self.server.default_upstream not in self.upstreams:
            raise ValueError(f"server.default_upstream {self.server.default_upstream!r} is not configured")
        if self.server.combo and not any(u.transport == self.upstream_transport for u in self.upstreams.values()):
            raise ValueError(f"combo {self.server.combo}: no configured upstream speaks {self.upstream_transport}")
        return self

    @property
    def downstream_transport(self) -> str | None:
        return self.server.combo.split("-")[0] if self.server.combo else None

    @property
    def upstream_transport(self) -> str | None:
        return self.server.combo.split("-")[1] if self.server.combo else None

    def default_upstream(self) -> str:
        """The configured default (else the first upstream), or with a pinned combo the first of its transport."""
        want = self.upstream_transport
        chosen = self.server.default_upstream or next(iter(self.upstreams))
        if want is None or self.upstreams[chosen].transport == want:
            return chosen
        return next(name for name, up in self.upstreams.items() if up.transport == want)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init kwargs), as the contract says.
        return env_settings, init_settings


def load(path: str | Path | None = None, defaults: dict[str, Any] | None = None, **overrides: Any) -> Settings:
    """Load `path`, else ./matrix.toml, else nothing; a section neither has comes from `defaults`.

    The command line passes the bundled mocks' `upstreams` as a default, so a relay with
    no config file reaches them; `overrides` (`server__port=0`) beat everything.
    """
    data: dict[str, Any] = {}
    if path is None and Path("matrix.toml").exists():
        path = "matrix.toml"
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    data = {**(defaults or {}), **data}
    for dotted, value in overrides.items():  # e.g. server__port=0 from the command line
        if value is None:
            continue
        section, _, key = dotted.partition("__")
        if key:
            data.setdefault(section, {})[key] = value
        else:
            data[section] = value
    try:
        return Settings(**data)
    except ValidationError as exc:
        # Location and reason only: pydantic's own text quotes the input, secrets included.
        problems = "; ".join(e["msg"] if e["type"] == "upstream_config" else
                             f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
                             for e in exc.errors(include_input=False, include_url=False))
        raise ConfigError(f"invalid configuration: {problems}") from None
