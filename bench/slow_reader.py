"""A reader that pauses during a fast, long stream: the relay's memory stays flat, every byte arrives.

    python -m bench.slow_reader [--tokens 100000] [--pause 10] [--downstream sse|ws]

Starts the mock and the relay as processes, streams `--tokens` tokens as fast as the mock
can send them, stops reading for `--pause` seconds after the first deltas, samples the
relay's RSS every 100 ms, then checks the reassembled text against the mock's answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from mock_ai.script import Script

from .procs import start_mock, start_relay
from .sysstat import rss_kib


async def _sample(pid: int, samples: list[tuple[float, int]], start: float) -> None:
    while True:
        samples.append((time.monotonic() - start, rss_kib(pid)))
        await asyncio.sleep(0.1)


async def _read(base: str, downstream: str, prompt: str, pause: float) -> tuple[str, int, str]:
    body = {"messages": [{"role": "user", "content": prompt}], "upstream": "openai"}
    text: list[str] = []
    end = ""

    async def take(event: dict) -> bool:
        """Keep the event's text; pause once after the third delta; True at the terminal event."""
        nonlocal end
        if event["type"] == "delta":
            text.append(event["text"])
            if len(text) == 3:
                await asyncio.sleep(pause)  # the provider keeps writing; the relay must merge, not hoard
        elif event["type"] in ("done", "error"):
            end = event["type"]
            return True
        return False

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=pause + 300)) as session:
        if downstream == "sse":
            async with session.post(f"{base}/v1/chat/sse", json=body) as response:
                async for line in response.content:
                    if line.startswith(b"data: ") and await take(json.loads(line[6:])):
                        break
        else:
            async with session.ws_connect(f"{base}/v1/chat/ws", max_msg_size=0) as ws:
                await ws.send_str(json.dumps({"type": "chat", **body}))
                async for message in ws:
                    if await take(json.loads(message.data)):
                        break
    return "".join(text), len(text), end


async def run(tokens: int, pause: float, downstream: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="matrix-slow-") as tmp:
        workdir = Path(tmp)
        mock = await start_mock(workdir)
        relay = await start_relay(workdir, mock)
        try:
            await asyncio.sleep(0.5)
            start = time.monotonic()
            baseline = rss_kib(relay.pid)
            samples: list[tuple[float, int]] = []
            sampler = asyncio.create_task(_sample(relay.pid, samples, start))
            prompt = f"slow reader\n#mock tokens={tokens} interval_ms=0"
            text, deltas, end = await _read(relay.base, downstream, prompt, pause)
            sampler.cancel()
            expected = Script.parse(prompt).answer_text()
            peak = max(kib for _, kib in samples)
            return {"downstream": downstream, "tokens": tokens, "pause_s": pause, "end": end,
                    "exact": text == expected, "answer_bytes": len(expected.encode()), "deltas": deltas,
                    "seconds": round(time.monotonic() - start, 1), "rss_baseline_kib": baseline,
                    "rss_peak_kib": peak, "rss_growth_kib": peak - baseline}
        finally:
            relay.stop()
            mock.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_reader", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--pause", type=float, default=10.0)
    parser.add_argument("--downstream", choices=("sse", "ws", "both"), default="both")
    args = parser.parse_args(argv)
    downs = ("sse", "ws") if args.downstream == "both" else (args.downstream,)
    ok = True
    for down in downs:
        result = asyncio.run(run(args.tokens, args.pause, down))
        print(json.dumps(result))
        ok &= result["exact"] and result["end"] == "done"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
