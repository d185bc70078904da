"""The client SSL context of one upstream, the same for the SSE and the WS transport.

Built once at start-up: loading a CA bundle blocks for tens of milliseconds, and a bad
file should stop the start, not the first stream.
"""

from __future__ import annotations

import logging
import ssl

from matrix.config import UpstreamConfig
from matrix.errors import ConfigError

log = logging.getLogger("matrix.upstreams.tls")


def client_context(name: str, config: UpstreamConfig) -> ssl.SSLContext | None:
    """None for a plain http:// or ws:// URL; else the system's trust (which honours
    SSL_CERT_FILE and SSL_CERT_DIR) plus `ca_file`, and the client certificate if any."""
    if not config.url.startswith(("https://", "wss://")):
        return None
    context = ssl.create_default_context()
    if config.ca_file:
        _load(name, "ca_file", config.ca_file, lambda: context.load_verify_locations(cafile=config.ca_file))
    if config.client_cert:
        password = config.client_key_password.get_secret_value()
        # A callable, so an encrypted key without a password fails instead of OpenSSL
        # prompting on the terminal of a server.
        _load(name, "client_key", config.client_key, lambda: context.load_cert_chain(
            config.client_cert, config.client_key, password=lambda: password.encode()))
    if not config.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        log.warning("upstream %s: TLS certificate verification is OFF (verify = false): anyone on the "
                    "path can read and change this traffic; use ca_file instead outside a lab", name)
    return context


def public(config: UpstreamConfig) -> dict:
    """What `GET /v1/upstreams` shows about TLS: paths, never key material."""
    if not config.url.startswith(("https://", "wss://")):
        return {}
    shown: dict = {"tls_verify": config.verify}
    if not config.verify:
        shown["warning"] = "TLS certificate verification is off (verify = false)"
    if config.ca_file:
        shown["ca_file"] = config.ca_file
    if config.client_cert:
        shown["client_cert"] = config.client_cert
    return shown


def _load(name: str, key: str, path: str, load) -> None:
    try:
        load()
    except FileNotFoundError:
        raise ConfigError(f"upstreams.{name}.{key}: no such file: {path}") from None
    except ssl.SSLError as exc:
        # Never the exception text beyond OpenSSL's reason: nothing of a key may leak.
        what = "a PEM CA bundle" if key == "ca_file" else \
            "client_cert + client_key: a PEM certificate and its unencrypted key (or client_key_password)"
        raise ConfigError(f"upstreams.{name}.{key}: cannot load {path}: expected {what} "
                          f"({exc.reason or 'unreadable'})") from None
    except OSError as exc:
        raise ConfigError(f"upstreams.{name}.{key}: cannot read {path}: {exc.strerror}") from None
