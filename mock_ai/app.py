"""The mock providers as one aiohttp application on one port, under the vendors' own paths."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from . import control, realtime, spark, sse
from .anthropic_messages import AnthropicMessages
from .baidu_agent import BaiduAgent
from .openai_chat import OpenAIChat
from .script import Script
from .state import STATE, Credentials, new_state

DEFAULT_PORT = 9100


def create_app(*, defaults: Script | Mapping[str, Any] | None = None,
               credentials: Credentials | Mapping[str, str] | None = None,
               first_frame_timeout_s: float = 60.0) -> web.Application:
    """All mock providers. `defaults` sets any directive key (`{"tokens": 40, "interval_ms": 30}`,
    None values ignored); `credentials` what they accept; `first_frame_timeout_s` how long
    Spark waits for the request frame after the upgrade (the vendor's 60 s)."""
    state = new_state(defaults, credentials, first_frame_timeout_s=first_frame_timeout_s)
    app = web.Application()
    app[STATE] = state
    app.cleanup_ctx.append(state.watchdog.cleanup_ctx)
    for path in spark.DOMAINS:
        app.router.add_get(path, spark.handle)
    app.router.add_post("/assistant/conversation", sse.handler(BaiduAgent()))
    app.router.add_post("/v1/chat/completions", sse.handler(OpenAIChat()))
    app.router.add_post("/v1/messages", sse.handler(AnthropicMessages()))
    app.router.add_get("/v1/realtime", realtime.handle)
    app.router.add_get("/_mock/stats", control.stats)
    app.router.add_post("/_mock/reset", control.reset)
    app.router.add_post("/_mock/arm", control.arm)
    return app


@asynccontextmanager
async def running(host: str = "127.0.0.1", port: int = DEFAULT_PORT, tls: Mapping[str, Any] | None = None,
                  **kw: Any) -> AsyncIterator[str]:
    """Serve `create_app(**kw)` while the block runs; yields the base URL (port 0 picks a free port).
    `tls` (`{"cert": ..., "key": ..., "client_ca": ...}`) serves HTTPS/WSS (mock_ai/tls.py)."""
    # A stalled stream never ends by itself: on exit, give handlers 0.25 s (aiohttp waits
    # twice that: once to finish, once after cancelling), not aiohttp's default 60 s.
    app = create_app(**kw)
    context: ssl.SSLContext | None = None
    if tls:
        from .tls import server_context
        context = server_context(tls["cert"], tls["key"], tls.get("client_ca"), stats=app[STATE].stats)
    runner = web.AppRunner(app, shutdown_timeout=0.25)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=context)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"{'https' if context else 'http'}://{_url_host(bound_host)}:{bound_port}"
    finally:
        await runner.cleanup()


async def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, **kw: Any) -> None:
    """Serve until cancelled (what `matrix mock` runs)."""
    async with running(host, port, **kw):
        await asyncio.Future()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
