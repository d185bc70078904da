"""Shared by the TLS and proxy tests: a private CA made per run, the mock served over TLS, the relay
in front of it, and a real forward proxy (HTTP CONNECT) that records what it tunnelled."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trustme

from conftest import TEST_STREAM
from matrix.app import create_app, server_ssl_context
from matrix.config import ServerConfig, Settings, StreamConfig
from mock_ai import relay_upstreams
from mock_ai.app import create_app as create_mock
from mock_ai.state import STATE
from mock_ai.tls import server_context

UPSTREAMS = ("spark", "baidu", "openai")  # Spark WS, Baidu agent SSE, OpenAI SSE
PAST = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
HIDDEN_HOST = "provider.invalid"  # only the test proxy resolves it (RFC 6761: never resolves elsewhere)
PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
             "no_proxy")


@dataclass
class PKI:
    """PEM files of one private CA: server certificates for every test case, and a client certificate."""

    dir: Path
    ca: Path
    certs: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # name -> (chain, key)

    def ctx(self) -> ssl.SSLContext:
        """A client context trusting this CA (and nothing else on the system)."""
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> PKI:
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA(organization_name="matrix test CA")
    pki = PKI(root, root / "ca.pem")
    ca.cert_pem.write_to_path(pki.ca)
    leaves = {"localhost": ca.issue_cert("localhost"),
              "other-host": ca.issue_cert("provider.example"),
              "expired": ca.issue_cert("localhost", not_before=PAST - datetime.timedelta(days=30), not_after=PAST),
              "hidden": ca.issue_cert(HIDDEN_HOST),
              "client": ca.issue_cert("matrix-relay@example.test")}
    for name, leaf in leaves.items():
        chain, key = root / f"{name}.pem", root / f"{name}.key"
        for i, pem in enumerate(leaf.cert_chain_pems):
            pem.write_to_path(chain, append=i > 0)
        leaf.private_key_pem.write_to_path(key)
        pki.certs[name] = (chain, key)
    return pki


@pytest.fixture
def tls_mock(aiohttp_server, pki):
    """Start the mock providers over TLS with one of `pki`'s certificates (and mutual TLS with `client_ca`)."""
    async def start(cert: str = "localhost", client_ca: Path | None = None):
        app = create_mock()
        chain, key = pki.certs[cert]
        return await aiohttp_server(app, ssl=server_context(chain, key, client_ca, stats=app[STATE].stats))
    return start


def tls_upstreams(host: str, port: int, **network) -> dict[str, dict]:
    """The built-in upstreams at https:// and wss:// `host:port`, each with the `network` keys."""
    ups = relay_upstreams(f"{host}:{port}")
    for up in ups.values():
        up["url"] = up["url"].replace("http://", "https://").replace("ws://", "wss://")
        up.update(network)
    return ups


@pytest.fixture
def tls_relay(aiohttp_server):
    """Start a relay whose upstreams are `upstreams` (see tls_upstreams), plain HTTP on its own port
    unless `server` says otherwise."""
    async def start(upstreams: dict, server: dict | None = None, **stream):
        settings = Settings(server=ServerConfig(**(server or {})),
                            stream=StreamConfig(**{**TEST_STREAM, **stream}), upstreams=upstreams)
        return await aiohttp_server(create_app(settings), ssl=server_ssl_context(settings.server))
    return start


async def mock_stats(server, tag: str | None = None) -> dict:
    """`/_mock/stats` of a mock served over TLS (`server` from tls_mock), `tls_hellos` without this request's own."""
    # Unverified: the mock may serve a certificate made to fail (expired, another host's).
    async with httpx.AsyncClient(verify=False, timeout=5.0) as client:
        response = await client.get(f"https://127.0.0.1:{server.port}/_mock/stats",
                                    params={"tag": tag} if tag else None)
    stats = response.json()
    stats["tls_hellos"] -= 1
    return stats


# -- a forward proxy --------------------------------------------------------------------------

@dataclass
class Tunnel:
    target: str  # host:port asked for in CONNECT
    status: int  # what the proxy answered
    authorized: bool  # a Proxy-Authorization header came (its value is never kept)
    opened_at: float = field(default_factory=time.monotonic)
    closed_at: float | None = None  # when the client's side of the tunnel ended


class ConnectProxy:
    """An HTTP forward proxy that only tunnels (CONNECT), as corporate proxies do for https:// and wss://.

    `credentials` ("user:password") makes it answer 407 without them; `hosts` maps names only it
    can resolve; `deny` lists hosts it answers 403 for; an unknown or unreachable target is 502.
    Every CONNECT is recorded in `tunnels`, with the moment the client's side of it closed.
    """

    def __init__(self, credentials: str | None = None, hosts: dict[str, str] | None = None,
                 deny: tuple[str, ...] = ()) -> None:
        self.expected = f"Basic {base64.b64encode(credentials.encode()).decode()}" if credentials else None
        self.hosts = hosts or {}
        self.deny = deny
        self.tunnels: list[Tunnel] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def closed(self, tunnel: Tunnel, timeout: float = 5.0) -> float:
        """When the client closed `tunnel` (bounded wait)."""
        async with asyncio.timeout(timeout):
            while tunnel.closed_at is None:
                await asyncio.sleep(0.002)
        return tunnel.closed_at

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(task := asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            authorization = headers.get("proxy-authorization")
            tunnel = Tunnel(target, 0, authorization is not None)
            self.tunnels.append(tunnel)
            host, _, port = target.rpartition(":")
            if method != "CONNECT":
                return await self._answer(writer, tunnel, 405, "Method Not Allowed")
            if self.expected and authorization != self.expected:
                return await self._answer(writer, tunnel, 407, "Proxy Authentication Required",
                                          'Proxy-Authenticate: Basic realm="test"\r\n')
            if host in self.deny:
                return await self._answer(writer, tunnel, 403, "Forbidden")
            try:
                up_reader, up_writer = await asyncio.open_connection(self.hosts.get(host, host), int(port))
            except OSError:
                return await self._answer(writer, tunnel, 502, "Bad Gateway")
            tunnel.status = 200
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
            await self._pipe(reader, writer, up_reader, up_writer, tunnel)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _answer(self, writer, tunnel: Tunnel, status: int, reason: str, extra: str = "") -> None:
        tunnel.status = status
        tunnel.closed_at = time.monotonic()
        writer.write(f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()

    async def _pipe(self, reader, writer, up_reader, up_writer, tunnel: Tunnel) -> None:
        async def copy(src, dst, client_side: bool) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                if client_side:
                    tunnel.closed_at = time.monotonic()
                dst.close()

        try:
            await asyncio.gather(copy(reader, up_writer, True), copy(up_reader, writer, False))
        finally:
            up_writer.close()
