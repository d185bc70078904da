"""The relay's aiohttp application: routes, error mapping, lifecycle, and running it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from pathlib import Path

import orjson
from aiohttp import web

import downstreams.conversations
import downstreams.openai
import downstreams.sse
import downstreams.ws
import engines
import stores
import upstreams

from . import access
from .appkeys import ACCESS, CLIENT, RELAY
from .config import ServerConfig, Settings
from .errors import ConfigError, MatrixError, RequestError, error_body
from .events import encode
from .logs import install_filters as install_log_filters
from .relay import Relay

log = logging.getLogger("matrix.app")
STATIC = Path(__file__).parent / "static"


@web.middleware
async def errors_as_json(request: web.Request, handler):
    """A refusal before a stream starts: HTTP 4xx/5xx with {"error": {"code", "message", "type", "param"}}."""
    try:
        return await handler(request)
    except MatrixError as exc:
        request.app[RELAY].metrics.refusals.labels(exc.code).inc()
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
        return web.json_response(exc.body(), status=exc.status, headers=headers)
    except web.HTTPException as exc:  # the router's 404/405 and aiohttp's own refusals: same shape
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status, "bad_request")
        request.app[RELAY].metrics.refusals.labels(code).inc()
        return web.json_response(error_body(exc.status, code, exc.reason), status=exc.status,
                                 headers={k: v for k, v in exc.headers.items() if k == "Allow"})


def create_app(settings: Settings) -> web.Application:
    install_log_filters()
    relay = Relay(settings, {name: upstreams.build(name, cfg, settings.stream)
                             for name, cfg in settings.upstreams.items()}, engines.build(settings),
                  stores.build(settings))
    guard = access.Access(settings, relay.engine)
    app = web.Application(middlewares=[errors_as_json, access.middleware(guard)],
                          client_max_size=settings.server.max_body_bytes)
    app[RELAY] = relay
    app[ACCESS] = guard
    app.on_response_prepare.append(access.cors_headers(guard))
    down = settings.downstream_transport
    sse_chat = downstreams.sse.chat if down in (None, "sse") else _pinned("sse", settings)
    # The OpenAI-compatible door is SSE on the wire: a relay pinned to ws-* has it off too.
    openai_chat = downstreams.openai.completions if down in (None, "sse") else _pinned("sse", settings)
    ws_chat = downstreams.ws.chat if down in (None, "ws") else _pinned("ws", settings)
    app.router.add_post("/v1/chat/sse", sse_chat)
    app.router.add_get("/v1/chat/ws", ws_chat)
    app.router.add_post("/v1/chat/completions", openai_chat)
    app.router.add_get("/v1/models", downstreams.openai.models)
    app.router.add_get("/v1/models/{model}", downstreams.openai.model)
    app.router.add_get("/v1/streams/{stream_id}", status)
    app.router.add_get("/v1/streams/{stream_id}/events", downstreams.sse.resume)
    app.router.add_post("/v1/streams/{stream_id}/cancel", cancel)
    app.router.add_get("/v1/upstreams", list_upstreams)
    app.router.add_get("/v1/conversations", downstreams.conversations.listing)
    app.router.add_get("/v1/conversations/{conversation_id}", downstreams.conversations.read)
    app.router.add_patch("/v1/conversations/{conversation_id}", downstreams.conversations.rename)
    app.router.add_delete("/v1/conversations/{conversation_id}", downstreams.conversations.delete)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/tickets", ticket)
    if STATIC.is_dir():
        app.router.add_get("/", index)
        app.router.add_static("/static", STATIC)

    async def drain(app: web.Application) -> None:
        # on_shutdown runs after the listening sockets close and before aiohttp cancels
        # the handlers, so live streams can still finish and deliver their last event.
        await relay.aclose(settings.server.drain_timeout_s)

    async def open_engine(app: web.Application) -> None:
        await relay.engine.open()
        if relay.conversations is not None:  # one that does not answer is logged; only conversations wait for it
            await relay.conversations.open()
        relay.shedder.start()

    async def stop_shedder(app: web.Application) -> None:
        relay.shedder.stop()

    app.on_startup.append(open_engine)
    app.on_cleanup.append(stop_shedder)
    app.on_shutdown.append(drain)
    return app


def _pinned(transport: str, settings: Settings):
    async def refuse(request: web.Request) -> web.Response:
        raise RequestError(f"the {transport} downstream is off: this relay is pinned to {settings.server.combo}",
                           code="combo_pinned", status=404)
    return refuse


async def cancel(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    stream = await relay.cancel(request.match_info["stream_id"], request[CLIENT])
    return web.json_response({"stream_id": stream.id, "finished": stream.finished})


async def status(request: web.Request) -> web.Response:
    """Where a stream is: its owner, upstream, combination, last seq and how it ended, if it did."""
    stream = await request.app[RELAY].get(request.match_info["stream_id"], request[CLIENT])
    end = stream.terminal
    return web.json_response({"stream_id": stream.id, "owner": stream.owner, "upstream": stream.upstream,
                              "combo": stream.combo, "last_seq": stream.last_seq, "finished": end is not None,
                              "end": orjson.loads(encode(end)) if end else None})  # the terminal event itself


async def list_upstreams(request: web.Request) -> web.Response:
    relay = request.app[RELAY]
    settings = relay.settings
    return web.json_response({
        "default": settings.default_upstream(),
        "combo": settings.server.combo or None,
        "upstreams": [{**cfg.public(name), **relay.upstreams[name].network}
                      for name, cfg in settings.upstreams.items()],
    })


async def healthz(request: web.Request) -> web.Response:
    """Liveness: 200 while the process serves at all, overloaded or not (that is /readyz's business)."""
    relay = request.app[RELAY]
    # pid: which process answered, where several relays share a port (--workers)
    # store: null while conversations can start, else why not (streams without one are not affected)
    store = relay.conversations.ready() if relay.conversations is not None else "no conversation store"
    return web.json_response({"status": "ok", "streams": relay.engine.local_streams, "pid": os.getpid(),
                              "loop_lag_ms": round(relay.shedder.lag_s * 1000, 1), "store": store})


async def readyz(request: web.Request) -> web.Response:
    """For load balancers: 503 while this relay cannot start streams (engine unreachable, or shedding load)."""
    relay = request.app[RELAY]
    reason = relay.engine.ready() or relay.shedder.reason()
    if reason is None:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not_ready", "reason": reason}, status=503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[RELAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def ticket(request: web.Request) -> web.Response:
    """A single-use ticket for a browser's WebSocket or EventSource, which cannot send headers."""
    guard = request.app[ACCESS]
    return web.json_response({"ticket": await guard.issue_ticket(request[CLIENT]),
                              "expires_in": request.app[RELAY].settings.auth.ticket_ttl_s})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


def server_ssl_context(server: ServerConfig) -> ssl.SSLContext | None:
    """TLS on the relay's own port, for deployments without a TLS proxy in front; None: plain HTTP."""
    if not server.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # The password callable makes an encrypted key fail here instead of OpenSSL prompting on a terminal.
    _load("tls_key", server.tls_key, lambda: context.load_cert_chain(server.tls_cert, server.tls_key,
                                                                    password=lambda: b""))
    if server.tls_client_ca:
        _load("tls_client_ca", server.tls_client_ca, lambda: context.load_verify_locations(server.tls_client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load(key: str, path: str, load) -> None:
    try:
        load()
    except (OSError, ssl.SSLError) as exc:  # OpenSSL's reason only: nothing of a key file's content
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise ConfigError(f"server.{key}: cannot load {path}: {reason}") from None


async def start_site(app: web.Application, host: str, port: int, header_timeout_s: float = 15.0,
                     ssl_context: ssl.SSLContext | None = None, reuse_port: bool = False) -> tuple[web.AppRunner, int]:
    """Start serving `app` (over TLS with `ssl_context`); returns the runner and the bound port
    (port 0 picks a free one). `reuse_port`: share the port with other relays (SO_REUSEPORT)."""
    # handler_cancellation: a client that disconnects cancels its handler at once, which is
    # how a vanished SSE client is noticed even while no token is being written.
    # keepalive_timeout also closes a connection that has not completed its request line and
    # headers in time (aiohttp arms it from the connection's start): the slowloris guard.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0,
                           keepalive_timeout=header_timeout_s)
    await runner.setup()
    # aiohttp's default listen backlog of 128 overflowed at 1,000 clients connecting at once
    # (bench/load.py: 19,143 dropped SYNs, clients stuck in retry backoff for seconds).
    site = web.TCPSite(runner, host, port, backlog=1024, ssl_context=ssl_context, reuse_port=reuse_port or None)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, bound


async def run_until_stopped(*runners: web.AppRunner) -> None:
    """Wait for SIGINT/SIGTERM, then clean up each runner (which drains its streams)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for runner in runners:
            await runner.cleanup()
