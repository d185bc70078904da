"""Time to first token, one request at a time: through the relay per combination vs straight to the vendor.

Connections are kept as an application would keep them: one keep-alive HTTP session for
SSE (the relay's SSE upstream pools its provider connections too), one open WebSocket per
WS-downstream combination. Spark allows one answer per connection, so every direct Spark
request (and every relayed one, upstream) pays a WebSocket handshake.
"""

from __future__ import annotations

import random
from contextlib import AsyncExitStack

import aiohttp

from .clients import Opened, Tally, chat_body, prompt, relay_ws_chat
from .lab import Lab, Route
from .plan import up_of
from .quantiles import latency_ms

WARM_ROUNDS = 2


def _nothing() -> None:
    pass


async def _socket_route(lab: Lab, stack: AsyncExitStack, combo: str) -> Route:
    ws = await stack.enter_async_context(lab.session.ws_connect(f"{lab.relay_base(combo)}/v1/chat/ws", max_msg_size=0))
    upstream = lab.plan.upstream(up_of(combo))

    async def run(session: aiohttp.ClientSession, text: str, tally: Tally, opened: Opened) -> None:
        await relay_ws_chat(ws, chat_body(text, upstream), tally, opened)
    return Route("relay", combo, run)


async def measure(lab: Lab, tick) -> dict:
    """Per route: TTFT p50/p90/p99 in ms; per combination: added p50 vs direct of its upstream transport."""
    plan = lab.plan
    async with AsyncExitStack() as stack:
        routes = [await _socket_route(lab, stack, c) if c.startswith("ws-") else lab.relay_route(c)
                  for c in plan.combos]
        transports = sorted({up_of(c) for c in plan.combos})
        routes += [r for t in transports for r in (lab.vendor_route("direct", t), lab.vendor_route("nginx", t)) if r]
        samples: dict[str, list[int]] = {r.label: [] for r in routes}
        errors = {r.label: 0 for r in routes}
        for round_ in range(WARM_ROUNDS + plan.ttft_requests):
            random.shuffle(routes)
            for route in routes:
                tally = Tally(3)
                try:
                    await route.run(lab.session, prompt(3, 1.0), tally, _nothing)
                except (aiohttp.ClientError, OSError) as exc:
                    tally.error = str(exc)
                if round_ < WARM_ROUNDS:
                    continue
                if tally.error or not tally.first_ns:
                    errors[route.label] += 1
                else:
                    samples[route.label].append(tally.first_ns - tally.sent_ns)
            if round_ >= WARM_ROUNDS:
                tick()
    out = {"routes": {}, "added_p50_ms": {}}
    for label, values in samples.items():
        out["routes"][label] = {**latency_ms(values), "errors": errors[label]}
    for combo in plan.combos:
        relay, direct = out["routes"][combo], out["routes"].get(f"direct-{up_of(combo)}")
        if relay.get("p50") is not None and direct and direct.get("p50") is not None:
            out["added_p50_ms"][combo] = round(relay["p50"] - direct["p50"], 4)
    return out
