"""`/v1/conversations`: list the caller's conversations, read one, rename it, delete it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from matrix.appkeys import CLIENT, RELAY
from matrix.errors import RequestError
from matrix.request import parse_json
from matrix.store import PAGE_DEFAULT, Conversation, Store, StoredMessage

from .sse import read_body


async def listing(request: web.Request) -> web.Response:
    """The caller's conversations, last updated first; `next_cursor` fetches the next page (null: no more)."""
    query = request.query
    unknown = sorted(set(query) - {"limit", "cursor"})
    if unknown:
        raise RequestError(f"unknown query parameter {unknown[0][:40]!r}; expected limit, cursor",
                           param=unknown[0][:40])
    limit = _integer(query.get("limit"), "limit") if "limit" in query else PAGE_DEFAULT
    page, following = await (await _store(request)).list_conversations(
        request[CLIENT], limit, query.get("cursor"))
    return web.json_response({"object": "list", "data": [conversation(c) for c in page], "next_cursor": following})


async def read(request: web.Request) -> web.Response:
    found = await (await _store(request)).get_conversation(request[CLIENT], request.match_info["conversation_id"])
    return web.json_response({**conversation(found.conversation), "messages": [message(m) for m in found.messages]})


async def rename(request: web.Request) -> web.Response:
    body = parse_json(await read_body(request))
    if not isinstance(body, dict) or set(body) != {"title"}:
        raise RequestError('the body must be {"title": "..."}', param="title")
    renamed = await (await _store(request)).rename(request[CLIENT], request.match_info["conversation_id"],
                                                    body["title"])
    return web.json_response(conversation(renamed))


async def delete(request: web.Request) -> web.Response:
    await (await _store(request)).delete(request[CLIENT], request.match_info["conversation_id"])
    return web.Response(status=204)


def conversation(c: Conversation) -> dict[str, Any]:
    return {"id": c.id, "title": c.title, "system": c.system, "created_at": _time(c.created_at),
            "updated_at": _time(c.updated_at)}


def message(m: StoredMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"id": m.id, "role": m.role, "text": m.text, "created_at": _time(m.created_at)}
    if m.role == "assistant":
        out.update(status=m.status, usage=m.usage, ttft_ms=m.ttft_ms, duration_ms=m.duration_ms,
                   upstream=m.upstream, combo=m.combo, stream_id=m.stream_id)
    return out


async def _store(request: web.Request) -> Store:
    return await request.app[RELAY].conversation_store().opened()


def _integer(raw: str | None, name: str) -> int:
    if raw is None or not (raw.isascii() and raw.isdigit()) or len(raw) > 6:
        raise RequestError(f"{name} must be an integer", param=name)
    return int(raw)


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # UTC, µs: what JavaScript's Date and Python's fromisoformat read
