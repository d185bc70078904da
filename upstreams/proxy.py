"""Which forward proxy, if any, a provider URL goes through: the one place both transports ask.

The rules are curl's and requests': `https_proxy` for https:// and wss://, `http_proxy`
for http:// and ws://, `all_proxy` when those are unset, lower case before upper case,
`no_proxy` (a comma-separated list of host names, `.domain` suffixes or `*`) for hosts to
reach directly. Two additions: loopback hosts (127.0.0.0/8, ::1, localhost) are never
proxied by the environment, only by an upstream's own `proxy`, so a proxy exported for
the internet never captures the local mock; and an upstream's `proxy` overrides the
environment (`proxy = ""` means direct).
"""

from __future__ import annotations

import base64
import ipaddress
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from pydantic import SecretStr

from matrix.errors import ConfigError


@dataclass(frozen=True)
class Route:
    """A proxy to tunnel through (HTTP CONNECT), its credentials kept out of every repr and message."""

    host: str
    port: int
    source: str  # "config", or the environment variable it came from
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The proxy URL without credentials: safe to show."""
        return f"http://{self.address}"

    def url_with_credentials(self) -> str:
        """For websockets, which reads proxy credentials from the URL. Never log it."""
        if self.username is None:
            return self.url
        return f"http://{_quote(self.username)}:{_quote(self.password or '')}@{self.address}"

    def headers(self) -> dict[str, str]:
        """For the CONNECT request: Basic credentials (RFC 7617), when there are any. Never log them."""
        if self.username is None:
            return {}
        token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
        return {"Proxy-Authorization": f"Basic {token}"}

    def public(self) -> dict:
        return {"proxy": self.url, "proxy_from": self.source, "proxy_auth": self.username is not None}


def choose(url: str, configured: SecretStr | None) -> Route | None:
    """The proxy for `url`: the upstream's own `proxy` when set, else the environment's rules."""
    if configured is not None:
        value = configured.get_secret_value()
        return parse(value, "config") if value else None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if _loopback(host):
        return None
    proxies = urllib.request.getproxies_environment()  # lower case wins over upper case
    scheme = "https" if parts.scheme in ("https", "wss") else "http"
    name, value = next(((f"{k}_proxy", proxies[k]) for k in (scheme, "all") if proxies.get(k)), (None, None))
    if value is None or name is None:
        return None
    port = parts.port or (443 if scheme == "https" else 80)
    if urllib.request.proxy_bypass_environment(f"{host}:{port}", proxies):  # no_proxy
        return None
    return parse(value if "://" in value else f"http://{value}", name)


def parse(value: str, source: str) -> Route:
    """An http://[user:password@]host[:port] proxy URL; an error names its source, never its value."""
    parts = urlsplit(value)
    try:
        port = parts.port or 80
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/"):
        where = "proxy" if source == "config" else f"the {source} environment variable"
        raise ConfigError(f"{where} must be http://[user:password@]host:port "
                          f"(TLS to the proxy and SOCKS are not supported)")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password or "") if username is not None else None
    return Route(parts.hostname, port, source, username, password)


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _quote(text: str) -> str:
    return quote(text, safe="")
