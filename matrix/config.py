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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigError

COMBOS = ("sse-sse", "sse-ws", "ws-sse", "ws-ws")
TRANSPORT_OF_KIND = {"spark": "ws", "baidu-agent": "sse", "openai": "sse"}
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
    default_upstream: str = "spark"
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


class AuthConfig(BaseModel):
    """Client auth: off while `keys` is empty (the demo), on as soon as a key is configured."""

    model_config = ConfigDict(extra="forbid")
    keys: list[SecretStr] = Field(default_factory=list)
    ticket_ttl_s: float = Field(60, gt=0)

    _resolve = field_validator("keys", mode="before")(
        classmethod(lambda cls, v: [_resolve_env(k) for k in v] if isinstance(v, list) else v))


class LogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class UpstreamConfig(BaseModel):
    """One provider endpoint. Fields not used by a kind are ignored by it."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["spark", "baidu-agent", "openai"]
    url: str
    domain: str = "generalv3.5"
    model: str = "gpt-4o-mini"
    app_id: str = ""
    api_key: SecretStr = SecretStr("")
    api_secret: SecretStr = SecretStr("")
    secret_key: SecretStr = SecretStr("")
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

    @property
    def transport(self) -> str:
        return TRANSPORT_OF_KIND[self.kind]

    def public(self, name: str) -> dict:
        """What `GET /v1/upstreams` shows: no secrets, no query string."""
        return {"name": name, "kind": self.kind, "transport": self.transport, "url": self.url.split("?")[0]}


def default_upstreams(mock_base: str = "127.0.0.1:9100") -> dict[str, dict]:
    return {
        "spark": {"kind": "spark", "url": f"ws://{mock_base}/v3.5/chat", "domain": "generalv3.5",
                  "app_id": "mock-app", "api_key": "mock-key", "api_secret": "mock-secret"},
        "baidu": {"kind": "baidu-agent", "url": f"http://{mock_base}/assistant/conversation",
                  "app_id": "mock-agent", "secret_key": "mock-secret"},
        "openai": {"kind": "openai", "url": f"http://{mock_base}/v1/chat/completions",
                   "api_key": "mock-key", "model": "qwen-plus"},
    }


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MATRIX_", env_nested_delimiter="__", extra="forbid")

    server: ServerConfig = ServerConfig()
    stream: StreamConfig = StreamConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    log: LogConfig = LogConfig()
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=lambda: default_upstreams())

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if not self.upstreams:
            raise ValueError("at least one upstream must be configured")
        if self.server.default_upstream not in self.upstreams:
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
        """The configured default, or with a pinned combo the first upstream of its transport."""
        want = self.upstream_transport
        if want is None or self.upstreams[self.server.default_upstream].transport == want:
            return self.server.default_upstream
        return next(name for name, up in self.upstreams.items() if up.transport == want)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init kwargs), as the contract says.
        return env_settings, init_settings


def load(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load `path`, else ./matrix.toml, else built-in defaults pointing at the bundled mocks."""
    data: dict[str, Any] = {}
    if path is None and Path("matrix.toml").exists():
        path = "matrix.toml"
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
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
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
                             for e in exc.errors(include_input=False, include_url=False))
        raise ConfigError(f"invalid configuration: {problems}") from None
