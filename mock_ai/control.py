"""The mock's own endpoints under `/_mock/`: stats to observe, reset to forget, arm to script handshakes."""

from __future__ import annotations

import orjson
from aiohttp import web

from .state import STATE


async def stats(request: web.Request) -> web.Response:
    """`GET /_mock/stats[?tag=X]`: `{"open": n, "connections": [...]}`."""
    return _json(request.app[STATE].stats.snapshot(request.query.get("tag")))


async def reset(request: web.Request) -> web.Response:
    """`POST /_mock/reset`: forget connections, armed directives and `fail_times` counts."""
    request.app[STATE].reset()
    return _json({"reset": True})


async def arm(request: web.Request) -> web.Response:
    """`POST /_mock/arm` with `{"directive": "fault=http_503 fail_times=2", "vendor": "spark"}`
    (or the directive as a text/plain body, for Spark): the next `fail_times` (default 1)
    connections of that vendor use the directive over the defaults; a request's own
    `#mock` line still wins for the keys it names."""
    raw = await request.read()
    try:
        body = orjson.loads(raw) if request.content_type == "application/json" else {"directive": raw.decode()}
        armed = request.app[STATE].arm(body.get("vendor", "spark"), str(body.get("directive", "")))
    except (ValueError, AttributeError) as exc:
        return _json({"error": str(exc)}, status=400)
    return _json({"armed": {"vendor": body.get("vendor", "spark"), "remaining": armed.remaining,
                            "directive": {k: str(v) for k, v in armed.overrides.items()}}})


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")
