"""OpenAI-compatible front door: `POST /v1/chat/completions` and `GET /v1/models` for any OpenAI client.

`model` names one of the relay's upstreams (`GET /v1/models` lists them), so the official
`openai` package reaches Spark, Baidu or any configured provider. This protocol has no
resume, so a client that disconnects stops the provider at once (no grace). Inside the
relay it is an ordinary stream (combo `openai-sse` / `openai-ws`): metrics, logs, limits
and shutdown apply.
"""

from __future__ import annotations

import time

from aiohttp import web

from matrix.appkeys import CLIENT, RELAY
from matrix.errors import RequestError
from matrix.events import Done, Error
from matrix.request import parse_json

from .openai_format import Chunks, completion, completion_request, error
from .sse import follow, read_body


async def completions(request: web.Request) -> web.StreamResponse:
    relay = request.app[RELAY]
    chat, options = completion_request(parse_json(await read_body(request)))
    stream = await relay.start(chat, "openai", request[CLIENT])
    created = int(time.time())
    if options.stream:
        return await follow(request, stream, -1, frames=Chunks(stream.id, options, created).frames, grace_s=0,
                            transport="openai")
    with relay.reader(stream, grace_s=0):  # a client gone mid-answer cancels the handler, and so the provider
        events = [e async for batch in stream.follow(-1) for e in batch]
    end = events[-1]
    if isinstance(end, Error):
        return web.json_response(error(end), status=503 if end.retryable else 502)
    assert isinstance(end, Done)
    text = "".join(e.text for e in events if e.type == "delta")  # type: ignore[union-attr]
    return web.json_response(completion(stream.id, options, created, text, end))


async def models(request: web.Request) -> web.Response:
    """The configured upstreams, as models: `model` in a request is an upstream's name."""
    upstreams = request.app[RELAY].settings.upstreams
    return web.json_response({"object": "list", "data": [_model(name, cfg.kind) for name, cfg in upstreams.items()]})


async def model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    upstreams = request.app[RELAY].settings.upstreams
    if name not in upstreams:
        raise RequestError(f"the model {name[:64]!r} does not exist; GET /v1/models lists them",
                           code="model_not_found", status=404, param="model")
    return web.json_response(_model(name, upstreams[name].kind))


def _model(name: str, kind: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": kind}
