"""A plain browser EventSource follows a stream through a dropped connection with its built-in reconnect."""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import pytest
import websockets

from clients import chat_body, expected_text
from test_browser import CHROMIUM, WAIT_MS, browser, page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} missing")


class Cutter:
    """A TCP forwarder between the browser and the relay whose connections the test can cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> "Cutter":
        self.server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.cut()
        self.server.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Drop every connection abruptly, as a flaky network would."""
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()


FOLLOW = """([path]) => {
  window.seen = []; window.opens = 0;
  const source = new EventSource(path);
  window.source = source;
  source.onopen = () => { window.opens += 1; };
  // `error` is also EventSource's own connection-error event, which carries no data.
  for (const type of ['start', 'delta', 'done', 'error']) {
    source.addEventListener(type, (m) => m.data && window.seen.push({...JSON.parse(m.data), lastEventId: m.lastEventId}));
  }
}"""


async def test_eventsource_reconnects_by_itself_and_loses_nothing(make_relay, page):  # noqa: F811
    """Cut mid-stream, EventSource reconnects with Last-Event-ID: every event once, then it stops (204)."""
    relay = await make_relay(disconnect_grace_s=10)
    sid = uuid.uuid4().hex[:12]
    prompt = "eventsource\n#mock tokens=60 interval_ms=40"
    async with websockets.connect(f"ws://127.0.0.1:{relay.port}/v1/chat/ws") as ws:  # start it, then leave
        await ws.send(json.dumps({"type": "chat", "stream_id": sid, **chat_body(prompt, "openai")}))
        assert json.loads(await ws.recv())["type"] == "start"
    async with Cutter(relay.port) as cutter:
        await page.goto(f"http://127.0.0.1:{cutter.port}/healthz")  # same origin as the stream URL
        await page.evaluate(FOLLOW, [f"/v1/streams/{sid}/events?last_event_id=-1"])
        await page.wait_for_function("window.seen.filter(e => e.type === 'delta').length >= 5", timeout=WAIT_MS)
        before = await page.evaluate("window.seen.length")
        cutter.cut()  # the browser's connection drops; EventSource must reconnect on its own
        await page.wait_for_function("window.seen.some(e => e.type === 'done')", timeout=WAIT_MS)
        await page.wait_for_function("window.source.readyState === 2", timeout=WAIT_MS)  # CLOSED after 204
        seen = await page.evaluate("window.seen")
        opens = await page.evaluate("window.opens")
    assert before < len(seen) and opens >= 2
    assert [e["seq"] for e in seen] == list(range(len(seen)))
    assert [int(e["lastEventId"]) for e in seen] == [e["seq"] for e in seen]
    assert "".join(e["text"] for e in seen if e["type"] == "delta") == expected_text(prompt)
