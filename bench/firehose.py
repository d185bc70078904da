"""A token source for the workers phase: OpenAI chat-completion chunks, many per write, cheap per token.

    python -m bench.firehose --port P [--host 127.0.0.1]

At saturation the mock spends about as much CPU per token as the relay it feeds (a frame,
a write and a timer check per token), so on 2 cores the box runs out before a second
relay worker can show what it adds (docs/measuring.md, "The load generator must be
cheap"). This server answers `POST .../chat/completions` with the `tokens=N` of the
prompt's `#mock` line as OpenAI chunks, each token's text `[<monotonic_ns>]` as the mock's
`stamp=1` makes it, BATCH chunks per write: the relay still parses every chunk, the source
barely shows. It sends no usage chunk. Any GET answers 200 (readiness); a connection
serves request after request (keep-alive).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time

BATCH = 32  # chunks per write; a provider's burst arrives the same way, several chunks per read
TOKENS = re.compile(rb"tokens=(\d+)")
LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
CHUNK = (b'data: {"id":"firehose","object":"chat.completion.chunk","model":"firehose","choices":[{"index":0,'
         b'"delta":{"content":"[%d]"},"finish_reason":null}]}\n\n')
END = (b'data: {"id":"firehose","object":"chat.completion.chunk","model":"firehose","choices":[{"index":0,'
       b'"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _answer(writer: asyncio.StreamWriter, tokens: int) -> None:
    writer.write(HEAD)
    for start in range(0, tokens, BATCH):
        writer.write(_chunked((CHUNK % time.monotonic_ns()) * min(BATCH, tokens - start)))
        await writer.drain()  # as fast as the relay reads, no faster
    writer.write(_chunked(END) + b"0\r\n\r\n")
    await writer.drain()


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = LENGTH.search(head)
            body = await reader.readexactly(int(length.group(1))) if length else b""
            if head.startswith(b"POST "):
                found = TOKENS.search(body)
                await _answer(writer, int(found.group(1)) if found else 12)
            else:
                writer.write(OK)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass  # the client left
    finally:
        writer.close()


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(_connection, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.firehose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
