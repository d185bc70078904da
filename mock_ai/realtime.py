"""OpenAI Realtime over WebSocket (`GET /v1/realtime?model=..`), text only: a session of client events.

Wire facts as in docs/protocols.md, "OpenAI Realtime", and the `openai` SDK's realtime
clients: the key is `Authorization: Bearer` on the upgrade, refused there with HTTP 401
and OpenAI's error body; `session.created` comes first; the client sends
`session.update`, `conversation.item.create` (one per message) and `response.create`;
`response.cancel` ends the streaming response as `cancelled`. The SDK's beta client sends
`OpenAI-Beta: realtime=v1`, which (like `beta=1`) selects the beta event names. The
`#mock` line is read from the last user message at each `response.create`, so handshake
faults come from defaults or `POST /_mock/arm`, as for Spark.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from .openai_chat import OpenAIChat
from .play import ClientGone, play, plan
from .realtime_events import NAME, RealtimeDialect, Session, dump, error_event
from .script import DirectiveError, Script
from .state import STATE, MockState
from .stats import Connection
from .ws import WSChannel, handshake_fault

ROLES = ("user", "system", "assistant")
BODIES = {"session.update": "session", "conversation.item.create": "item", "response.create": "response"}


class Cancelled(Exception):
    """The client sent `response.cancel` while a response was streaming."""


class RealtimeChannel(WSChannel):
    """The session's WebSocket: `response.cancel` stops the streaming response at once;
    every other client event waits in an inbox for the session loop."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        super().__init__(request, ws)
        self.active = False  # a response is streaming
        self._inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()

    def received(self, data: str | bytes) -> None:
        if self.active and _type_of(data) == "response.cancel":
            self.stop(Cancelled())
        else:
            self._inbox.put_nowait(data)

    def left(self) -> None:
        super().left()
        self._inbox.put_nowait(None)

    async def next(self) -> str | bytes:
        """The next client event; ClientGone once the client has left."""
        data = await self._inbox.get()
        if data is None:
            raise ClientGone("client closed the WebSocket")
        return data

    async def close(self) -> None:
        """The end of a response, not of the session: the socket stays open."""


async def handle(request: web.Request) -> web.StreamResponse:
    """`GET /v1/realtime?model=gpt-realtime` with `Authorization: Bearer <key>`."""
    state = request.app[STATE]
    vendor = OpenAIChat()  # the same key and the same HTTP error bodies as chat completions
    with state.stats.track(NAME, request.path) as conn:
        refusal = vendor.refusal(request, state.credentials)
        if refusal is None and not request.query.get("model"):
            refusal = vendor.bad_request("Missing required parameter: 'model'.")
        if refusal is not None:
            conn.close("rejected")
            return refusal
        status, base = handshake_fault(state, NAME, conn)
        if status is not None:
            return vendor.http_error(status)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session = Session(request.query["model"], beta=request.headers.get("OpenAI-Beta") == "realtime=v1" or base.beta)
        try:
            async with RealtimeChannel(request, ws) as channel:
                await _converse(channel, ws, state, session, base, conn)
        except ConnectionError:  # ClientGone, or a send to a client already gone
            conn.close("client_closed")
        return ws


async def _converse(channel: RealtimeChannel, ws: web.WebSocketResponse, state: MockState, session: Session,
                    base: Script, conn: Connection) -> None:
    await channel.send(dump({"type": "session.created", "session": session.describe()}))
    while not ws.closed:
        data = await channel.next()
        try:
            event = orjson.loads(data)
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise ValueError("a client event is a JSON object with a string 'type'")
        except ValueError as exc:
            await channel.send(error_event("invalid_request_error", "invalid_json", f"Invalid client event: {exc}"))
            continue
        for frame in await _answer(event, channel, ws, state, session, base, conn):
            await channel.send(frame)


async def _answer(event: dict[str, Any], channel: RealtimeChannel, ws: web.WebSocketResponse, state: MockState,
                  session: Session, base: Script, conn: Connection) -> list[str]:
    """Handle one client event; the frames still to send (a response sends its own)."""
    kind, event_id = event["type"], event.get("event_id")

    def refuse(code: str, message: str, param: str | None = None) -> list[str]:
        return [error_event("invalid_request_error", code, message, param, event_id)]

    field = BODIES.get(kind)
    body = event.get(field, {} if kind == "response.create" else None)  # response.create's is optional
    if field is not None and not isinstance(body, dict):
        return refuse("invalid_type", f"Invalid type for '{field}': expected an object.", field)
    if kind == "session.update":
        if not session.beta and body.get("type") != "realtime":  # GA sessions name their type
            return refuse("missing_required_parameter", "Missing required parameter: 'session.type'.",
                          "session.type")
        try:
            session.update(body)
        except ValueError as exc:
            return refuse("invalid_value", str(exc), "session.max_output_tokens")
        return [dump({"type": "session.updated", "session": session.describe()})]
    if kind == "conversation.item.create":
        if body.get("type") != "message" or body.get("role") not in ROLES or not isinstance(body.get("content"), list):
            return refuse("invalid_value", "this mock takes message items with a role and a content list", "item")
        return session.add(body)
    if kind == "response.create":
        try:
            ask = session.ask(body)
            script = state.script_for(NAME, ask.text, base=base)
        except (ValueError, DirectiveError) as exc:
            return refuse("invalid_value", str(exc), "response")
        await _respond(channel, ws, session, script, ask, conn)
        return []
    if kind == "response.cancel":  # a cancel while streaming never gets here (RealtimeChannel)
        return refuse("response_cancel_not_active", "Cancellation failed: no active response found.")
    return refuse("invalid_value", f"Invalid value: '{kind}'. This mock speaks text only.", "type")


async def _respond(channel: RealtimeChannel, ws: web.WebSocketResponse, session: Session, script: Script,
                   ask: Any, conn: Connection) -> None:
    conn.tag = script.tag or conn.tag  # one connection, many responses: the last tag named
    conn.messages = list(ask.messages)
    tokens, finish = plan(script, ask)
    dialect = RealtimeDialect(ask, finish, beta=session.beta or script.beta, with_usage=script.usage,
                              error_code=script.error)
    channel.active = True
    try:
        await play(script, tokens, dialect, channel, conn)
    except Cancelled:
        channel.clear()
        conn.close("client_closed")
        for frame in dialect.cancelled():
            await channel.send(frame)
    finally:
        channel.active = False
    if script.fault is not None and script.fault.name == "malformed_after":
        await ws.close()  # the session cannot go on after a frame no client can read


def _type_of(data: str | bytes) -> Any:
    try:
        event = orjson.loads(data)
    except ValueError:
        return None
    return event.get("type") if isinstance(event, dict) else None
