"""How one upstream reaches its provider (SSL context, proxy route) and what a failed connect means.

Both transports build one `Network` per upstream and hand every connect failure to it, so
a certificate, proxy, DNS or refused connection reads the same on SSE and WS. A failure
no retry can fix (a certificate, a TLS alert, a proxy's refusal) is `upstream_rejected`;
one that may pass (DNS, refused, reset, timeout) stays `upstream_unavailable`. Messages
name the host and port, never the URL (its query may hold a key) nor the proxy's
credentials, and the transports raise them `from None` for the same reason: aiohttp's
and websockets' exceptions carry the proxy credentials and the signed URL.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from http import HTTPStatus
from typing import Iterable, Iterator
from urllib.parse import urlsplit

from matrix.config import UpstreamConfig
from matrix.errors import UpstreamError, UpstreamRejected, UpstreamUnavailable

from . import proxy, tls
from .proxy import Route

# OpenSSL X509_V_ERR_* codes, with what the operator can do about each.
_CERT_HINTS = {
    9: "the certificate is not valid yet: check this machine's clock",
    10: "the provider must renew it, or this machine's clock is wrong",
    18: "trust it with ca_file or SSL_CERT_FILE",
    19: "trust its CA with ca_file or SSL_CERT_FILE",
    20: "trust its CA with ca_file or SSL_CERT_FILE",
    21: "trust its CA with ca_file or SSL_CERT_FILE",
    62: "the url's host must be one of the certificate's names",
    64: "the url's address must be one of the certificate's addresses",
}
_PROXY_HINTS = {407: "check the proxy credentials", 403: "the proxy does not allow this destination"}


@dataclass(frozen=True)
class Network:
    name: str
    target: str  # host:port of the provider, for messages
    ssl: ssl.SSLContext | None
    route: Route | None
    has_client_cert: bool
    public: dict  # what `GET /v1/upstreams` shows: TLS settings and the proxy, no credentials

    def proxy_refused(self, status: int) -> UpstreamRejected:
        """The proxy answered the CONNECT with a non-2xx status: 407, 403, 502 when it cannot reach the target."""
        assert self.route is not None
        phrase = _phrase(status)
        hint = f" ({_PROXY_HINTS[status]})" if status in _PROXY_HINTS else ""
        return UpstreamRejected(f"{self.name}: proxy {self.route.address} refused the tunnel to {self.target}: "
                                f"HTTP {status}{phrase}{hint}", upstream_code=f"proxy_{status}")

    def proxy_garbled(self) -> UpstreamRejected:
        assert self.route is not None
        return UpstreamRejected(f"{self.name}: {self.route.address} did not answer the CONNECT like an HTTP proxy",
                                upstream_code="proxy_invalid")

    def closed_early(self) -> UpstreamUnavailable:
        """The provider (or what listens on its port) closed the connection without an HTTP answer."""
        return UpstreamUnavailable(f"{self.name}: {self.target} closed the connection before answering")

    def failure(self, exc: BaseException, *, at_proxy: bool = False,
                lost: Iterable[BaseException] = ()) -> UpstreamError:
        """A connect failure, from the exception, its causes and what the connection reported as lost."""
        causes = [*_chain(exc), *(c for e in lost for c in _chain(e))]
        for cause in causes:
            # aiohttp's ClientConnectorCertificateError is an SSLCertVerificationError too, without its fields.
            if isinstance(cause, ssl.SSLCertVerificationError) and hasattr(cause, "verify_code"):
                reason = (cause.verify_message or "unknown reason").rstrip(".")
                reason = reason[0].lower() + reason[1:]
                hint = f" ({_CERT_HINTS[cause.verify_code]})" if cause.verify_code in _CERT_HINTS else ""
                return UpstreamRejected(f"{self.name}: certificate verify failed: {reason} for {self.target}{hint}",
                                        upstream_code="tls_certificate")
        for cause in causes:
            if type(cause).__module__ == "ssl" and isinstance(cause, ssl.SSLError) and \
                    not isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
                return self._tls_refused(cause)
        where = f"proxy {self.route.address}" if at_proxy and self.route else self.target
        for cause in causes:
            if isinstance(cause, socket.gaierror):
                return UpstreamUnavailable(f"{self.name}: cannot resolve {where.rpartition(':')[0]}")
            if isinstance(cause, ConnectionRefusedError):
                return UpstreamUnavailable(f"{self.name}: connection refused by {where}")
            if isinstance(cause, TimeoutError):
                return UpstreamUnavailable(f"{self.name}: connect to {where} timed out")
            if isinstance(cause, ConnectionResetError):
                return UpstreamUnavailable(f"{self.name}: connection reset by {where}")
            if isinstance(cause, EOFError):  # websockets: the peer closed before the handshake's answer
                return self.closed_early()
        return UpstreamUnavailable(f"{self.name}: cannot connect to {where}: {type(exc).__name__}")

    def _tls_refused(self, cause: ssl.SSLError) -> UpstreamRejected:
        reason = cause.reason or "handshake failed"
        if "ALERT_" in reason:  # the provider ended the handshake: e.g. TLSV13_ALERT_CERTIFICATE_REQUIRED
            alert = reason.partition("ALERT_")[2].lower().replace("_", " ")
            if "certificate" in alert or alert == "handshake failure":
                hint = " (it does not accept our client certificate)" if self.has_client_cert else \
                    " (it wants a client certificate: set client_cert and client_key)"
            else:
                hint = ""
            return UpstreamRejected(f"{self.name}: TLS refused by {self.target}: alert {alert}{hint}",
                                    upstream_code="tls_alert")
        hint = " (is it a TLS port? use http:// or ws:// for a plain one)" if reason == "WRONG_VERSION_NUMBER" else ""
        return UpstreamRejected(f"{self.name}: TLS handshake with {self.target} failed: "
                                f"{reason.lower().replace('_', ' ')}{hint}", upstream_code="tls_handshake")


def for_upstream(name: str, config: UpstreamConfig) -> Network:
    """Built once per upstream at start-up: a bad CA file or proxy variable stops the start."""
    parts = urlsplit(config.url)
    port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    route = proxy.choose(config.url, config.proxy)
    return Network(name, f"{host}:{port}", tls.client_context(name, config), route, bool(config.client_cert),
                   {**tls.public(config), **(route.public() if route else {})})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if isinstance(getattr(current, "os_error", None), BaseException):  # aiohttp's connector errors
            yield current.os_error  # type: ignore[attr-defined]
        current = current.__cause__ or current.__context__


def _phrase(status: int) -> str:
    try:
        return f" {HTTPStatus(status).phrase}"
    except ValueError:
        return ""
