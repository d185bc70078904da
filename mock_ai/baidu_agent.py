"""Baidu agent conversation API (`POST /assistant/conversation`): `event:message` / `data:{...}` frames.

Wire facts as in docs/protocols.md, "Baidu agent": no space after the colons, bare
`event:ping` keep-alives, no `[DONE]` (the frame with `endTurn: true` ends the turn, then
the body ends), errors as a frame with a non-zero top-level `status`. Status codes are
the ones clients map (11 bad appId, 13 bad secretKey, 18 rate limit, 1000 bad request);
the vendor never confirmed them.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import orjson
from aiohttp import web

from .play import Ask
from .script import Fault, Script
from .sse import json_frame
from .state import Credentials

NAME = "baidu-agent"
PING = b"event:ping\n\n"
HEADERS = {"Content-Type": "text/event-stream;charset=UTF-8", "Cache-Control": "no-cache"}
# HTTP-level refusals (fault=http_*, handshake_401): the HTTP status -> body `status`.
HTTP_STATUS = {401: (13, "secretKey is invalid or expired"), 429: (18, "rate limited, try again later"),
               500: (500, "internal server error"), 503: (503, "service unavailable")}


def frame(payload: dict[str, Any]) -> bytes:
    return json_frame(b"event:message\ndata:", payload)


def error(status: int, message: str) -> dict[str, Any]:
    return {"status": status, "message": message, "logid": _logid()}


def _logid() -> str:
    return str(secrets.randbelow(10**10))


class BaiduDialect:
    """The frames of one agent turn: text pieces in `data.message.content[0]`, then `endTurn`."""

    ping = PING
    ping_every_tokens = 5
    ping_every_s = 0.5

    def __init__(self, thread_id: str) -> None:
        self._thread_id = thread_id
        self._msg_id = uuid.uuid4().hex
        self._logid = _logid()

    def _message(self, content: list[dict[str, Any]], end_turn: bool) -> bytes:
        return frame({"status": 0, "message": "succ", "logid": self._logid, "data": {"message": {
            "content": content, "endTurn": end_turn, "msgId": self._msg_id,
            "threadId": self._thread_id, "msgType": "normal"}}})

    def token(self, text: str, *, last: bool) -> list[bytes]:
        piece = {"dataType": "markdown", "isFinished": last,
                 "data": {"text": text, "type": "txt", "showType": "append"}}
        return [self._message([piece], end_turn=False)]

    def finish(self) -> list[bytes]:
        return [self._message([{"isFinished": False, "feedback": {"showFeedback": True}}], end_turn=True)]

    def error(self, fault: Fault) -> list[bytes]:
        return [frame(error(500, f"agent failed (mock fault {fault})"))]

    def malformed(self) -> bytes:
        return b'event:message\ndata:{"status":0,"message":"succ","data":{"message":{"content":[{\n\n'


class BaiduAgent:
    """The SSE vendor behind `POST /assistant/conversation?appId=..&secretKey=..`."""

    name = NAME
    headers = HEADERS

    def refusal(self, request: web.Request, credentials: Credentials) -> web.Response | None:
        # Auth is by query string only; a refusal is one error frame with HTTP 200.
        if request.query.get("appId") != credentials.baidu_app_id:
            return self._one_frame(error(11, "appId is invalid"))
        if request.query.get("secretKey") != credentials.baidu_secret_key:
            return self._one_frame(error(13, "secretKey is invalid or expired"))
        return None

    def read(self, body: bytes) -> Ask:
        request = orjson.loads(body)
        try:
            text = request["message"]["content"]["value"]["showText"]
        except (KeyError, TypeError):
            text = None
        if not isinstance(text, str):
            raise ValueError("message.content.value.showText must be a string")
        thread_id = request.get("threadId") or uuid.uuid4().hex
        return Ask(text=text, context=text, thread_id=str(thread_id), messages=(("user", text),))

    def bad_request(self, message: str) -> web.Response:
        return self._one_frame(error(1000, f"invalid request: {message}"))

    def http_error(self, status: int) -> web.Response:
        code, message = HTTP_STATUS.get(status, HTTP_STATUS[500])
        return web.Response(status=status, body=orjson.dumps(error(code, message)),
                            content_type="application/json")

    def dialect(self, script: Script, ask: Ask, finish: str) -> BaiduDialect:
        return BaiduDialect(ask.thread_id)

    def whole(self, script: Script, tokens: list[str], finish: str, ask: Ask) -> Any:
        raise NotImplementedError("the conversation endpoint always streams")

    def _one_frame(self, payload: dict[str, Any]) -> web.Response:
        return web.Response(body=frame(payload), headers=self.headers)
