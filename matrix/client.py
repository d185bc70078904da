"""`matrix chat`: a terminal client that streams one answer through the relay and times it.

It speaks to the relay with independent client libraries (httpx + httpx-sse for SSE,
websockets for WS), the way an application would.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import time
import uuid
from typing import AsyncIterator

import httpx
import orjson
import websockets
from httpx_sse import aconnect_sse


async def sse_events(base: str, body: dict, headers: dict, trace=None,
                     tls: ssl.SSLContext | None = None) -> AsyncIterator[dict]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), verify=tls or True) as client:
        async with aconnect_sse(client, "POST", f"{base}/v1/chat/sse", json=body, headers=headers) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                yield {"type": "error", **source.response.json().get("error", {})}
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
    async with websockets.connect(url, compression=None, additional_headers=headers,
                                  **({"ssl": tls} if tls and url.startswith("wss:") else {})) as ws:
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


async def chat_command(args: argparse.Namespace) -> int:
    body = {"messages": [{"role": "user", "content": args.prompt}], "stream_id": uuid.uuid4().hex[:12],
            "trace": args.trace}
    if args.upstream:
        body["upstream"] = args.upstream
    base = args.url.rstrip("/")
    def trace(raw: str) -> None:  # client frames; trace events are shown as the provider hop below
        if '"type":"trace"' not in raw:
            _show(f"client  <= relay   {args.downstream}", raw)
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    stream = sse_events if args.downstream == "sse" else ws_events
    try:
        tls = client_tls(args.ca_file, args.client_cert, args.client_key)
    except (OSError, ssl.SSLError) as exc:
        print(f"matrix chat: cannot load --ca-file/--client-cert: {exc}", file=sys.stderr)
        return 2
    events = stream(base, body, headers, trace if args.trace else None, tls)
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
        return 1
    elapsed = time.perf_counter() - started
    print()
    if end.get("type") == "error":
        print(f"error {end.get('code')}: {end.get('message')}"
              + (f" (vendor code {end['upstream_code']})" if end.get("upstream_code") else ""), file=sys.stderr)
    ttft = (first - started) * 1000 if first else float("nan")
    stream_s = (time.perf_counter() - first) if first else 0
    rate = deltas / stream_s if stream_s > 0 else float("nan")
    usage = end.get("usage") or {}
    print(f"-- {end.get('type', 'no end')}/{end.get('reason', end.get('code', '?'))}: TTFT {ttft:.1f} ms, "
          f"{deltas} deltas, {chars} chars in {elapsed * 1000:.0f} ms, {rate:.1f} deltas/s"
          + (f", usage {usage}" if usage else ""))
    return 0 if end.get("type") == "done" else 1
