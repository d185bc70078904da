"""iFlytek Spark chat over WebSocket: signed-URL handshake, one request frame, status 0/1/2 frames.

Wire facts as in docs/protocols.md, "iFlytek Spark". A `#mock` line can
only arrive in the request frame, after the upgrade; handshake-level faults therefore
come from the app's defaults or from `POST /_mock/arm`, and in a request frame they
become the vendor's equivalent error frame (see IN_FRAME_CODES).
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime, timezone
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from . import spark_auth
from .play import Ask, ClientGone, play, plan, usage
from .script import DirectiveError, Fault, Script
from .state import STATE, MockState
from .stats import Connection
from .ws import SecondRequest, WSChannel, handshake_fault

NAME = "spark"
# URL path -> the `parameter.chat.domain` it serves (§1.1); any other domain gets 10404.
DOMAINS = {
    "/v1.1/chat": "lite", "/v2.1/chat": "generalv2", "/v3.1/chat": "generalv3",
    "/v3.5/chat": "generalv3.5", "/v4.0/chat": "4.0Ultra",
    "/chat/pro-128k": "pro-128k", "/chat/max-32k": "max-32k",
}
# Handshake refusals besides the signature's own 401: the gateway's small JSON bodies.
HANDSHAKE_BODIES = {
    401: spark_auth.SignatureError("HMAC signature does not match").body(),
    429: {"message": "API rate limit exceeded"},
    500: {"message": "An unexpected error occurred"},
    503: {"message": "Service Unavailable"},
}
# `header.code` for scripted faults inside the stream (§1.6).
IN_FRAME_CODES = {
    "error_before": (10013, "input failed content audit"),
    "error_after": (10014, "output hit sensitive content; the rest of the answer cannot be shown"),
    "http_429": (11202, "QpsOverFlow"),
    "http_500": (10012, "EngineInternalError"),
    "http_503": (10110, "service busy, please retry later"),
    "handshake_401": (11200, "AppIdNoAuthError"),
}


def error_frame(code: int, message: str, sid: str) -> str:
    # No payload, as the vendor's error frames; status 2 because nothing follows.
    return orjson.dumps({"header": {"code": code, "message": message, "sid": sid, "status": 2}}).decode()


class SparkDialect:
    """The frames of one answer: one token per frame, usage on the status-2 frame only."""

    ping = None  # WebSocket pings are aiohttp's business, not the dialect's
    ping_every_tokens = 0
    ping_every_s = 0.0

    def __init__(self, sid: str, ask: Ask, with_usage: bool) -> None:
        self.sid = sid
        self._ask = ask
        self._with_usage = with_usage
        self._seq = 0
        self._ended = False

    def _frame(self, text: str, last: bool) -> str:
        status = 2 if last else (0 if self._seq == 0 else 1)
        payload: dict[str, Any] = {"choices": {"status": status, "seq": self._seq, "text": [
            {"content": text, "role": "assistant", "index": 0}]}}
        if last and self._with_usage:
            totals = usage(self._ask.prompt_tokens, self._seq + 1)
            payload["usage"] = {"text": {"question_tokens": len(self._ask.text), **totals}}
        self._seq += 1
        self._ended = last
        return orjson.dumps({"header": {"code": 0, "message": "Success", "sid": self.sid, "status": status},
                             "payload": payload}).decode()

    def token(self, text: str, *, last: bool) -> list[str]:
        return [self._frame(text, last)]

    def finish(self) -> list[str]:
        # Only an empty answer has not sent its status-2 frame with the last token.
        return [] if self._ended else [self._frame("", last=True)]

    def error(self, fault: Fault) -> list[str]:
        code, message = IN_FRAME_CODES.get(fault.name, IN_FRAME_CODES["http_500"])
        return [error_frame(code, f"{message} (mock fault {fault})", self.sid)]

    def malformed(self) -> str:
        return '{"header":{"code":0,"message":"Success","sid":"' + self.sid


async def handle(request: web.Request) -> web.StreamResponse:
    """`GET /v3.5/chat?authorization=..&date=..&host=..` and the other version paths."""
    state = request.app[STATE]
    with state.stats.track(NAME, request.path) as conn:
        refusal, base = _handshake(request, state, conn)
        if refusal is not None:
            return refusal
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            await _converse(request, ws, state, base, conn)
        except ConnectionError:  # ClientGone, or a refusal frame the client left too early to get
            conn.close("client_closed")
        return ws


def _handshake(request: web.Request, state: MockState, conn: Connection) -> tuple[web.Response | None, Script]:
    """A refusal of the upgrade (bad signature, or a scripted handshake fault), and the base script."""
    creds = state.credentials
    try:
        spark_auth.verify(request.rel_url.raw_query_string, request.headers.get("Host", ""),
                          request.rel_url.raw_path, {creds.spark_api_key: creds.spark_api_secret},
                          datetime.now(timezone.utc))
    except spark_auth.SignatureError as exc:
        conn.close("rejected")
        return web.json_response(exc.body(), status=401), state.defaults
    status, base = handshake_fault(state, NAME, conn)
    if status is None:
        return None, base
    return web.json_response(HANDSHAKE_BODIES.get(status, HANDSHAKE_BODIES[500]), status=status), base


async def _converse(request: web.Request, ws: web.WebSocketResponse, state: MockState, base: Script,
                    conn: Connection) -> None:
    sid = f"cht000{secrets.token_hex(4)}@dx{secrets.token_hex(6)}"

    async def refuse(code: int, message: str) -> None:
        await ws.send_str(error_frame(code, message, sid))
        conn.close("rejected")
        await ws.close()

    try:  # the vendor drops a connection that sends no request within 60 s
        msg = await ws.receive(timeout=state.first_frame_timeout_s)
    except asyncio.TimeoutError:
        conn.close("rejected")
        await ws.close()
        return
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        raise ClientGone("client left before sending its request")
    try:
        app_id, domain, ask = read(msg.data if msg.type == WSMsgType.TEXT else b"")
    except ValueError as exc:
        return await refuse(10003 if isinstance(exc, orjson.JSONDecodeError) else 10004, str(exc))
    if app_id != state.credentials.spark_app_id:
        return await refuse(11200, "AppIdNoAuthError: app_id does not match the api_key")
    if domain != DOMAINS[request.path]:
        return await refuse(10404, f"domain {domain!r} does not serve {request.path}")
    try:
        script = state.script_for(NAME, ask.text, base=base)
    except DirectiveError as exc:
        return await refuse(10005, f"invalid parameter value: {exc}")
    conn.tag, conn.messages = script.tag, list(ask.messages)
    tokens, _ = plan(script, ask)  # Spark frames carry no finish reason
    async with WSChannel(request, ws) as channel:
        try:
            await play(script, tokens, SparkDialect(sid, ask, script.usage), channel, conn)
        except SecondRequest:
            await refuse(10007, "a request is still being processed; wait for it to finish")


def read(data: str | bytes) -> tuple[str, str, Ask]:
    """`header.app_id`, `parameter.chat.domain` and the ask of a request frame; ValueError if malformed."""
    frame = orjson.loads(data)
    try:
        app_id = frame["header"]["app_id"]
        chat = frame["parameter"]["chat"]
        domain, max_tokens = chat["domain"], chat.get("max_tokens")
        contents = [(t["role"], t["content"]) for t in frame["payload"]["message"]["text"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"schema error in request frame: {exc!r}") from None
    users = [content for role, content in contents if role == "user"]
    if not users or not all(isinstance(c, str) for _, c in contents):
        raise ValueError("payload.message.text needs a user message with string content")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError("parameter.chat.max_tokens must be a positive integer")
    return str(app_id), str(domain), Ask(
        text=users[-1], context="".join(c for _, c in contents), max_tokens=max_tokens, messages=tuple(contents))
