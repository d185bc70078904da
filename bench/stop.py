"""Stop → provider connection closed: cancel relayed streams mid-answer and read when the mock saw them go.

The bench takes `time.monotonic()` just before `POST /v1/streams/{id}/cancel`; the mock's
`GET /_mock/stats` reports each connection's `closed_at` on the same host clock. The
OpenAI front door has no stream id to cancel: its client stops an answer by closing the
connection, and the relay stops the provider at once (no grace period), so `openai-*`
combinations are stopped that way. Direct streams that the client itself closes give the
reference: how fast the mock notices a close at all.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid

from .clients import CANCEL_BY_ID, Tally, prompt
from .fleet import Fleet
from .lab import Lab, Route
from .plan import down_of, up_of
from .quantiles import latency_ms

# Tokens of an answer that outlives the test (10 s at 50 tok/s). Not more: the mock draws
# the whole answer when the request arrives, and 10^5 tokens block its loop for ~50 ms,
# which then shows up as a late close of some other stream.
LONG = 500
TOKENS_BEFORE_STOP = 3


async def _when_flowing(tally: Tally) -> None:
    deadline = time.monotonic() + 10.0
    while tally.count < TOKENS_BEFORE_STOP and tally.error is None and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    await asyncio.sleep(random.random() * 0.1)


async def _cancel_via_relay(lab: Lab, route: Route, tally: Tally, task: asyncio.Task, at: dict) -> None:
    await _when_flowing(tally)
    at["t"] = time.monotonic()
    async with lab.session.post(f"{lab.relay_base(route.label)}/v1/streams/{tally.stream_id}/cancel") as response:
        at["ok"] = response.status == 200


async def _close_by_client(lab: Lab, route: Route, tally: Tally, task: asyncio.Task, at: dict) -> None:
    await _when_flowing(tally)
    at["t"] = time.monotonic()
    at["ok"] = True
    task.cancel()  # leaving the client's `async with` closes the connection (WS: with a close frame)


async def _closed_at(lab: Lab, tags: set[str]) -> dict[str, float | None]:
    """Poll the mock until every tagged connection has closed (or 3 s passed)."""
    found: dict[str, float | None] = {}
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        async with lab.session.get(f"{lab.mock.base}/_mock/stats") as response:
            stats = await response.json()
        found = {c["tag"]: c["closed_at"] for c in stats["connections"] if c["tag"] in tags}
        if len(found) == len(tags) and all(v is not None for v in found.values()):
            break
        await asyncio.sleep(0.05)
    return found


async def _measure(lab: Lab, route: Route, stopper) -> dict:
    fleet = Fleet(lab.session)
    tags = []
    for _ in range(lab.plan.stop_streams):
        tag = f"stop{uuid.uuid4().hex[:12]}"
        fleet.launch(route, lambda tag=tag: prompt(LONG, lab.plan.interval_ms, tag=tag), LONG)
        tags.append(tag)
    marks = [{} for _ in tags]
    await asyncio.gather(*[stopper(lab, route, tally, task, at)
                           for (route, tally, task), at in zip(fleet.flights, marks)])
    await fleet.finish(10.0)
    closed = await _closed_at(lab, set(tags))
    delays = [int((closed[tag] - at["t"]) * 1e9) for tag, at in zip(tags, marks) if closed.get(tag) is not None]
    return {**latency_ms(delays), "not_closed": sum(closed.get(tag) is None for tag in tags),
            "cancel_refused": sum(not at.get("ok") for at in marks)}


def stopper_for(combo: str):
    """Cancel by id where the downstream has one; otherwise (the OpenAI front door) the client leaves."""
    return _cancel_via_relay if down_of(combo) in CANCEL_BY_ID else _close_by_client


async def measure(lab: Lab, tick) -> dict:
    """Per combination (cancel through the relay, or the client closes) and per upstream transport
    (`direct-*`, the client closes)."""
    plan = lab.plan
    transports = sorted({up_of(c) for c in plan.combos})
    jobs = [(lab.relay_route(c), stopper_for(c)) for c in plan.combos]
    jobs += [(lab.vendor_route("direct", t), _close_by_client) for t in transports]
    random.shuffle(jobs)
    out = {}
    for route, stopper in jobs:
        out[route.label] = {**await _measure(lab, route, stopper),
                            "stopped_by": "cancel" if stopper is _cancel_via_relay else "client close"}
        if route.role == "relay":
            tick()
    return {label: out[label] for label in [*plan.combos, *(f"direct-{t}" for t in transports)]}
