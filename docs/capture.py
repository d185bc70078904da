"""Rewrite the captured frames in docs/combinations.md and docs/protocols.md from a real run.

Starts the mock providers and the relay in this process (on free ports of 127.0.0.1),
streams one short answer through each combination with real clients (httpx for SSE,
websockets for WS), once plainly and once with `"trace": true` for the provider hop, and
writes what crossed each hop between the `<!-- capture:NAME -->` markers of the docs.
Nothing between the markers is written by hand, so the frames stay true: run this again
after changing a dialect, the mocks or the event format.

    .venv/bin/python docs/capture.py          # rewrite the docs in place
    .venv/bin/python docs/capture.py --check  # exit 1 if a doc lacks a marker (no writing)

The ports in the captured text are shown as the demo's (relay 8080, mock 9100); the ids,
timestamps and signatures are whatever this run produced.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import websockets  # noqa: E402

from matrix.app import create_app, start_site  # noqa: E402
from matrix.config import ServerConfig, Settings, StreamConfig  # noqa: E402
from mock_ai import relay_upstreams  # noqa: E402
from matrix.sse import Decoder  # noqa: E402
from mock_ai.app import running  # noqa: E402

DOCS = ROOT / "docs"
SHOWN_RELAY, SHOWN_MOCK = "127.0.0.1:8080", "127.0.0.1:9100"
TIMEOUT = 15.0

# combination -> (client transport, upstream used for it): each vendor appears at least once.
COMBOS = {"sse-sse": ("sse", "openai"), "sse-ws": ("sse", "spark"),
          "ws-sse": ("ws", "baidu"), "ws-ws": ("ws", "spark")}
PROMPT = "你好, relay!\n#mock tokens=3 interval_ms=40"
# protocols.md: a vendor error after two tokens, and frames split in 16-byte pieces.
ERROR_PROMPT = "fail after two\n#mock tokens=4 interval_ms=20 fault=error_after:2"
SPLIT_PROMPT = "split me\n#mock tokens=2 interval_ms=20 split=16"


class Run:
    """What crossed the client hop in one stream, and the events it carried."""

    def __init__(self) -> None:
        self.sent: list[str] = []       # what the client sent (request body or WS messages)
        self.headers: dict[str, str] = {}
        self.received: list[str] = []   # SSE: the raw body (one item); WS: one item per frame
        self.events: list[dict] = []


async def run_sse(base: str, body: dict) -> Run:
    run = Run()
    run.sent.append(json.dumps(body, ensure_ascii=False, separators=(",", ":")))
    raw = bytearray()
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        async with client.stream("POST", f"{base}/v1/chat/sse", json=body) as response:
            run.headers = {k: v for k, v in response.headers.items()
                           if k in ("content-type", "cache-control", "x-accel-buffering", "transfer-encoding")}
            async for chunk in response.aiter_raw():
                raw += chunk
    run.received.append(raw.decode())
    run.events = [json.loads(e.data) for e in Decoder().feed(bytes(raw))]
    return run


async def run_ws(base: str, body: dict) -> Run:
    run = Run()
    message = json.dumps({"type": "chat", **body}, ensure_ascii=False, separators=(",", ":"))
    run.sent.append(message)
    async with websockets.connect(base.replace("http", "ws", 1) + "/v1/chat/ws", compression=None) as ws:
        await ws.send(message)
        async with asyncio.timeout(TIMEOUT):
            async for frame in ws:
                run.received.append(frame)
                run.events.append(json.loads(frame))
                if run.events[-1]["type"] in ("done", "error"):
                    break
    return run


RUNNERS = {"sse": run_sse, "ws": run_ws}


def body(prompt: str, upstream: str, stream_id: str, trace: bool = False) -> dict:
    request = {"messages": [{"role": "user", "content": prompt}], "upstream": upstream, "stream_id": stream_id}
    if trace:
        request["trace"] = True
    return request


# -- rendering ------------------------------------------------------------------------

def fence(text: str, lang: str = "text") -> str:
    ticks = "````" if "```" in text else "```"
    return f"{ticks}{lang}\n{text.rstrip(chr(10))}\n{ticks}"


def client_hop(down: str, run: Run) -> str:
    if down == "sse":
        headers = "\n".join(f"{k}: {v}" for k, v in run.headers.items())
        return "\n\n".join([
            "**Client hop, client → relay** — `POST /v1/chat/sse`, `Content-Type: application/json`:",
            fence(run.sent[0], "json"),
            "**Client hop, relay → client** — response headers (among others), then the body byte for byte:",
            fence(f"HTTP/1.1 200 OK\n{headers}"),
            fence(run.received[0]),
        ])
    frames = [f"→ {m}" for m in run.sent] + [f"← {f}" for f in run.received]
    return "\n\n".join([
        "**Client hop** — `GET /v1/chat/ws` upgraded to a WebSocket; one JSON text frame per "
        "message (→ client to relay, ← relay to client):",
        fence("\n".join(frames)),
    ])


def provider_hop(upstream_transport: str, traced: Run) -> str:
    traces = [e for e in traced.events if e["type"] == "trace"]
    out = [t["data"] for t in traces if t["dir"] == "out"]
    ins = [t["data"] for t in traces if t["dir"] == "in"]
    if upstream_transport == "ws":
        what_out = ("**Provider hop, relay → provider** — after the WebSocket handshake on the signed URL "
                    "(not shown: its signature is a credential), one request frame:")
        what_in = "**Provider hop, provider → relay** — one text frame each, then the provider closes:"
        shown_in = "\n".join(ins)
    else:
        what_out = ("**Provider hop, relay → provider** — the HTTP request (headers and any query string "
                    "are not traced: they hold the credentials):")
        what_in = ("**Provider hop, provider → relay** — the response body as the relay read it from the "
                   "network, one block per read:")
        shown_in = "\n".join(f"── read {i} ({len(d.encode())} bytes) ──\n{d.rstrip(chr(10))}\n"
                             for i, d in enumerate(ins, 1))
    return "\n\n".join([what_out, fence("\n\n".join(out)), what_in, fence(shown_in)])


def summary(run: Run) -> str:
    text = "".join(e.get("text", "") for e in run.events if e["type"] == "delta")
    end = run.events[-1]
    ending = f"`{end['type']}`" + (f" reason `{end['reason']}`" if "reason" in end else f" code `{end.get('code')}`")
    return (f"The client reassembles {json.dumps(text, ensure_ascii=False)} from "
            f"{sum(e['type'] == 'delta' for e in run.events)} `delta` events; the stream ends with {ending}.")


def normalise(text: str, relay_port: int, mock_port: int) -> str:
    return (text.replace(f"127.0.0.1:{relay_port}", SHOWN_RELAY)
                .replace(f"127.0.0.1:{mock_port}", SHOWN_MOCK))


def replace_block(doc: str, name: str, content: str) -> str:
    pattern = re.compile(rf"(<!-- capture:{re.escape(name)} -->).*?(<!-- /capture:{re.escape(name)} -->)", re.S)
    if not pattern.search(doc):
        raise SystemExit(f"docs: marker <!-- capture:{name} --> ... <!-- /capture:{name} --> is missing")
    return pattern.sub(lambda m: f"{m.group(1)}\n{content}\n{m.group(2)}", doc)


# -- capturing ------------------------------------------------------------------------

async def capture() -> dict[str, str]:
    blocks: dict[str, str] = {}
    async with running("127.0.0.1", 0) as mock_url:
        mock_port = int(mock_url.rsplit(":", 1)[1])
        upstreams = relay_upstreams(f"127.0.0.1:{mock_port}")
        upstreams["spark-wrong-secret"] = {**upstreams["spark"], "api_secret": "not-the-secret"}
        settings = Settings(server=ServerConfig(port=0), stream=StreamConfig(), upstreams=upstreams)
        app = create_app(settings)
        runner, relay_port = await start_site(app, "127.0.0.1", 0)
        base = f"http://127.0.0.1:{relay_port}"
        try:
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                listing = (await client.get(f"{base}/v1/upstreams")).json()
            transports = {u["name"]: u["transport"] for u in listing["upstreams"]}
            for combo, (down, upstream) in COMBOS.items():
                plain = await RUNNERS[down](base, body(PROMPT, upstream, f"doc-{combo}"))
                traced = await RUNNERS[down](base, body(PROMPT, upstream, f"doc-{combo}-trace", trace=True))
                blocks[combo] = "\n\n".join([
                    f"Captured with prompt `{PROMPT.splitlines()[0]}` and the directive "
                    f"`{PROMPT.splitlines()[1]}` (3 tokens, 40 ms apart), upstream `{upstream}`.",
                    client_hop(down, plain),
                    provider_hop(transports[upstream], traced),
                    summary(plain)])
            for upstream in ("spark", "baidu", "openai"):
                traced = await run_ws(base, body(ERROR_PROMPT, upstream, f"doc-error-{upstream}", trace=True))
                last_in = [e["data"] for e in traced.events if e["type"] == "trace" and e["dir"] == "in"][-1]
                error = json.dumps(traced.events[-1], ensure_ascii=False, separators=(",", ":"))
                blocks[f"error-{upstream}"] = "\n\n".join([
                    f"`{ERROR_PROMPT.splitlines()[1]}`: the provider's last frame, then the client's last event.",
                    fence(f"provider → relay\n{last_in.rstrip(chr(10))}\n\nrelay → client\n{error}")])
            traced = await run_ws(base, body(SPLIT_PROMPT, "openai", "doc-split", trace=True))
            reads = [e["data"] for e in traced.events if e["type"] == "trace" and e["dir"] == "in"]
            cut = next(i for i, d in enumerate(reads) if "\\x" in d)  # a read ending inside a character
            window = range(max(cut - 3, 0), min(cut + 3, len(reads)))
            blocks["split-openai"] = "\n\n".join([
                f"`{SPLIT_PROMPT.splitlines()[1]}`: {len(reads)} network reads for one short answer. Reads "
                f"{window.start + 1} to {window.stop} as the relay got them (`⏎` is a line feed; the bytes of "
                "a UTF-8 character cut in two by a read show as `\\x..`, half in each read):",
                fence("\n".join(f"read {i + 1}: {reads[i].replace(chr(10), '⏎')}" for i in window)),
                summary(traced)])
            refused = await run_ws(base, body("hello", "spark-wrong-secret", "doc-spark-401"))
            blocks["spark-401"] = "\n\n".join([
                "An upstream configured with a wrong `api_secret`: the handshake is refused with HTTP 401, "
                "and the client gets:",
                fence("\n".join(refused.received))])
        finally:
            await runner.cleanup()
    blocks = {name: normalise(text, relay_port, mock_port) for name, text in blocks.items()}
    blocks["stamp"] = (f"Frames captured by `docs/capture.py` on {datetime.date.today().isoformat()} "
                       "from a real run of the relay and the bundled mock providers.")
    return blocks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that every marker exists")
    args = parser.parse_args()
    targets = {"combinations.md": [*COMBOS, "stamp"],
               "protocols.md": ["error-spark", "error-baidu", "error-openai", "split-openai", "spark-401", "stamp"]}
    if args.check:
        for doc, names in targets.items():
            text = (DOCS / doc).read_text()
            for name in names:
                replace_block(text, name, "")
        return 0
    blocks = asyncio.run(capture())
    for doc, names in targets.items():
        path = DOCS / doc
        text = path.read_text()
        for name in names:
            text = replace_block(text, name, blocks[name])
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
