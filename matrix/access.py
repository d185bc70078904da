"""Who may use the relay: API keys, short-lived WS tickets, and the Origin allow-list (CORS, CSWSH)."""

from __future__ import annotations

import secrets

from aiohttp import web

from .config import Settings
from .engine import Engine
from .errors import RequestError
from .identity import ANONYMOUS, digest, owners

CLIENT = web.RequestKey("client", str)  # who sent a request: its owner id (matrix/identity.py)


def public(path: str) -> bool:
    """Liveness and the demo page need no key; everything under /v1/ and /metrics does."""
    return path in ("/", "/healthz", "/readyz") or path.startswith("/static/")


class Access:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._owners = owners(*settings.auth.secrets())  # key digest -> owner
        self._origins = set(settings.server.allowed_origins)
        self._ticket_ttl = settings.auth.ticket_ttl_s
        self._engine = engine  # keeps the tickets: one relay's memory, or Redis for many relays

    @property
    def enabled(self) -> bool:
        return bool(self._owners)

    async def identify(self, request: web.Request) -> str:
        """The client's owner id: `client:NAME` or `key:FINGERPRINT`, or `ip:ADDR` when auth is off."""
        if not self._owners:
            return f"{ANONYMOUS}{request.remote}"
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            # Looked up by digest, not compared byte by byte: the time taken tells nothing
            # about any prefix of a key, and does not grow with the number of keys.
            owner = self._owners.get(digest(header[7:].strip()))
            if owner is not None:
                return owner
        elif request.method == "GET" and (ticket := request.query.get("ticket")):
            # Browsers cannot set headers on WebSocket or EventSource: a ticket from an
            # authenticated POST /v1/tickets, single use, valid for ticket_ttl_s.
            if client := await self._engine.take_ticket(ticket):
                return client
            raise RequestError("the ticket is unknown, used or expired", code="unauthorized", status=401)
        raise RequestError("missing or invalid API key (Authorization: Bearer <key>)", code="unauthorized",
                           status=401)

    async def issue_ticket(self, client: str) -> str:
        ticket = secrets.token_urlsafe(24)
        await self._engine.put_ticket(ticket, client, self._ticket_ttl)
        return ticket

    def origin_allowed(self, request: web.Request) -> bool:
        """No Origin (not a browser), the relay's own host, or an origin on the allow-list.

        The own-host check compares host[:port] only: behind a TLS-terminating proxy the
        relay sees `http` while the page is `https`. A proxy that rewrites Host needs the
        public origin in `server.allowed_origins`.
        """
        origin = request.headers.get("Origin")
        return origin is None or origin in self._origins or origin.partition("://")[2] == request.host


CORS_HEADERS = {"Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, Last-Event-ID",
                "Access-Control-Max-Age": "600", "Vary": "Origin"}


def middleware(access: Access):
    @web.middleware
    async def access_control(request: web.Request, handler):
        origin = request.headers.get("Origin")
        if not access.origin_allowed(request):
            # Refused server-side, not only by the browser's CORS: a WebSocket handshake is
            # not protected by CORS at all (cross-site WebSocket hijacking).
            raise RequestError(f"origin {origin!r} is not allowed", code="origin_not_allowed", status=403)
        if request.method == "OPTIONS" and origin:
            return web.Response(status=204, headers={**CORS_HEADERS, "Access-Control-Allow-Origin": origin})
        if not public(request.path):
            request[CLIENT] = await access.identify(request)
        return await handler(request)
    return access_control


def cors_headers(access: Access):
    async def add(request: web.Request, response: web.StreamResponse) -> None:
        """on_response_prepare: streaming responses send their headers early, so add CORS here."""
        origin = request.headers.get("Origin")
        if origin is not None and access.origin_allowed(request):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
    return add
