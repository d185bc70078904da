"""`matrix chat` and `matrix conversations`: stream answers through the relay, time them, continue conversations.

It speaks to the relay with independent client libraries (httpx + httpx-sse for SSE,
websockets for WS), the way an application would. With a conversation id, each request
carries only the new user message and `conversation_id`; the relay supplies the history.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import threading
import time
import uuid
from typing import AsyncIterator
from urllib.parse import quote

import httpx
import orjson
import websockets
from httpx_sse import aconnect_sse

QUIT = "/quit"


def _refusal(status: int, body: bytes) -> dict:
    """An HTTP refusal as an `error` event; 429 and 5xx may pass if tried again, as the relay's own errors say."""
    try:
        error = orjson.loads(body).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):  # a proxy's HTML page, say
        error = {}
    return {"type": "error", "code": error.get("code") or f"http_{status}",
            "message": error.get("message") or body[:200].decode(errors="replace").strip(),
            "http_status": status, "retryable": status == 429 or status >= 500}


async def sse_events(base: str, body: dict, headers: dict, trace=None,
                     tls: ssl.SSLContext | None = None) -> AsyncIterator[dict]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), verify=tls or True) as client:
        async with aconnect_sse(client, "POST", f"{base}/v1/chat/sse", json=body, headers=headers) as source:
            if source.response.status_code != 200:
                yield _refusal(source.response.status_code, await source.response.aread())
                return
            async for sse in source.aiter_sse():
                if not sse.data:  # a `: ping` keep-alive
                    continue
                if trace:
                    trace(f"id: {sse.id}\nevent: {sse.event}\ndata: {sse.data}")
                yield orjson.loads(sse.data)


async def ws_events(base: str, body: dict, headers: dict, trace=None,
                    tls: ssl.SSLContext | None = None) -> AsyncIterator[dict]:
    url = base.replace("http", "ws", 1) + "/v1/chat/ws"
    try:
        ws = await websockets.connect(url, compression=None, additional_headers=headers,
                                      **({"ssl": tls} if tls and url.startswith("wss:") else {}))
    except websockets.InvalidStatus as exc:  # the upgrade refused, e.g. 401 without a key
        yield _refusal(exc.response.status_code, exc.response.body or b"")
        return
    async with ws:
        await ws.send(orjson.dumps({"type": "chat", **body}).decode())
        async for frame in ws:
            if trace:
                trace(frame)
            event = orjson.loads(frame)
            yield event
            if event["type"] in ("done", "error"):
                return


def client_tls(ca_file: str | None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """The system's trust (and SSL_CERT_FILE), plus `ca_file`; a client certificate for a relay that asks."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    if cert:
        context.load_cert_chain(cert, key)
    return context


def _show(hop: str, raw: str) -> None:
    """One raw frame on stderr, dimmed, so the answer on stdout stays readable."""
    print(f"\n\033[2m[{hop}] {raw.rstrip()}\033[0m", file=sys.stderr, flush=True)


def _error_line(end: dict) -> str:
    """An error event as one line: its code first, since that is what a script or a search needs."""
    details = [f"HTTP {end['http_status']}"] if end.get("http_status") else []
    if end.get("upstream_code"):
        details.append(f"vendor code {end['upstream_code']}")
    if end.get("retryable"):
        details.append("retryable")
    return f"error {end.get('code')}: {end.get('message')}" + (f" ({', '.join(details)})" if details else "")


def _tls(args: argparse.Namespace, command: str) -> ssl.SSLContext | None:
    try:
        return client_tls(args.ca_file, args.client_cert, args.client_key)
    except (OSError, ssl.SSLError) as exc:
        print(f"matrix {command}: cannot load --ca-file/--client-cert: {exc}", file=sys.stderr)
        return None


def _headers(args: argparse.Namespace) -> dict:
    return {"Authorization": f"Bearer {args.key}"} if args.key else {}


async def chat_command(args: argparse.Namespace) -> int:
    tls = _tls(args, "chat")
    if tls is None:
        return 2
    if args.prompt is not None:
        return (await _turn(args, tls, args.prompt, args.conversation))[0]
    conversation = args.conversation
    if conversation is None:
        conversation = uuid.uuid4().hex
        print(f"conversation {conversation} (continue with: matrix chat --conversation {conversation})",
              file=sys.stderr, flush=True)
    status = 0
    while (prompt := await _next_prompt()) is not None:
        status, end = await _turn(args, tls, prompt, conversation)
        if end.get("seq") is None and status and not end.get("retryable"):
            return status  # refused before any stream (forbidden, a bad id...): the next line would be too
    return status


async def _next_prompt() -> str | None:
    """The next prompt typed on stdin; None at EOF or `/quit`. A line ending in `\\` continues on the next."""
    lines: list[str] = []
    while True:
        if sys.stdin.isatty():
            print("… " if lines else "> ", end="", file=sys.stderr, flush=True)
        line = await _read_line()
        if not line:  # EOF (Ctrl-D)
            return "\n".join(lines) if lines else None
        line = line.rstrip("\r\n")
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        lines.append(line)
        prompt = "\n".join(lines)
        if prompt.strip() == QUIT:
            return None
        if prompt.strip():
            return prompt
        lines = []


def _read_line() -> asyncio.Future[str]:
    """One line of stdin, read on a daemon thread: the loop stays free, and Ctrl-C leaves no thread to wait for
    (an executor thread stuck in readline() would hold up the exit until Enter)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def read() -> None:
        line = sys.stdin.readline()
        if not loop.is_closed():
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(line))
    threading.Thread(target=read, name="stdin", daemon=True).start()
    return future


async def _turn(args: argparse.Namespace, tls: ssl.SSLContext, prompt: str,
                conversation: str | None) -> tuple[int, dict]:
    """Stream one answer to stdout and time it; the exit status and the terminal event."""
    body = {"messages": [{"role": "user", "content": prompt}], "stream_id": uuid.uuid4().hex[:12],
            "trace": args.trace}
    if args.upstream:
        body["upstream"] = args.upstream
    if conversation:
        body["conversation_id"] = conversation
    base = args.url.rstrip("/")
    def trace(raw: str) -> None:  # client frames; trace events are shown as the provider hop below
        if '"type":"trace"' not in raw:
            _show(f"client  <= relay   {args.downstream}", raw)
    stream = sse_events if args.downstream == "sse" else ws_events
    events = stream(base, body, _headers(args), trace if args.trace else None, tls)
    started = time.perf_counter()
    first = None
    deltas = chars = 0
    end: dict = {}
    try:
        async for event in events:
            if event["type"] == "trace":
                arrow = "relay   => provider" if event["dir"] == "out" else "relay   <= provider"
                _show(arrow, event["data"])
            elif event["type"] == "start":
                print(f"[{event['combo']} via {event['upstream']}] ", end="", flush=True)
            elif event["type"] == "delta":
                first = first or time.perf_counter()
                deltas += 1
                chars += len(event["text"])
                print(event["text"], end="", flush=True)
            else:
                end = event
    except (httpx.HTTPError, OSError, websockets.WebSocketException) as exc:
        print(f"\nmatrix chat: cannot reach the relay at {base}: {exc}", file=sys.stderr)
        return 1, {"type": "error", "code": "unreachable", "retryable": True}
    elapsed = time.perf_counter() - started
    print()
    if end.get("type") == "error":
        print(_error_line(end), file=sys.stderr)
    ttft = (first - started) * 1000 if first else float("nan")
    stream_s = (time.perf_counter() - first) if first else 0
    rate = deltas / stream_s if stream_s > 0 else float("nan")
    usage = end.get("usage") or {}
    print(f"-- {end.get('type', 'no end')}/{end.get('reason', end.get('code', '?'))}: TTFT {ttft:.1f} ms, "
          f"{deltas} deltas, {chars} chars in {elapsed * 1000:.0f} ms, {rate:.1f} deltas/s"
          + (f", usage {usage}" if usage else ""), flush=True)
    return (0 if end.get("type") == "done" else 1), end


async def conversations_command(args: argparse.Namespace) -> int:
    """List the caller's conversations, newest first, or print one's messages."""
    tls = _tls(args, "conversations")
    if tls is None:
        return 2
    base = args.url.rstrip("/")
    if args.id:
        path, params = f"/v1/conversations/{quote(args.id, safe='')}", None
    else:
        path, params = "/v1/conversations", {"limit": args.limit, **({"cursor": args.cursor} if args.cursor else {})}
    try:
        async with httpx.AsyncClient(base_url=base, headers=_headers(args), verify=tls, timeout=10.0) as http:
            response = await http.get(path, params=params)
    except httpx.HTTPError as exc:
        print(f"matrix conversations: cannot reach the relay at {base}: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(_error_line(_refusal(response.status_code, response.content)), file=sys.stderr)
        return 1
    page = response.json()
    if args.id:
        _print_transcript(page)
        return 0
    for conversation in page["data"]:
        print(f"{conversation['id']}  {_when(conversation['updated_at'])}  {conversation['title']}")
    if page.get("next_cursor"):
        print(f"(more: matrix conversations --cursor {page['next_cursor']})", file=sys.stderr)
    return 0


def _when(iso: str) -> str:
    return iso[:16].replace("T", " ") + "Z"  # to the minute: enough to tell conversations apart


def _print_transcript(transcript: dict) -> None:
    print(f"# {transcript['title']}  ({transcript['id']}, started {_when(transcript['created_at'])})")
    if transcript.get("system"):
        print(f"system: {transcript['system']}")
    for message in transcript["messages"]:
        if message["role"] != "assistant":
            print(f"\n{message['role']}: {message['text']}")
            continue
        facts = [message.get("status") or "?"]
        if message.get("duration_ms") is not None:
            facts.append(f"{message['duration_ms']:.0f} ms")
        if message.get("upstream"):
            facts.append(f"{message.get('combo')} via {message['upstream']}")
        print(f"\nassistant [{', '.join(facts)}]: {message['text']}")
