"""Overload: offer a relay twice the streams it is set to carry, and see it shed the excess cleanly.

A relay of its own runs with `[limits] max_active_streams = overload_capacity` (the loop-lag
limit at its default). Twice that many clients each try to hold one paced stream for
`overload_seconds`: a client refused with 503 waits the relay's Retry-After (with jitter,
as a polite client does) and tries again; one whose stream ends starts another. Direct
streams to the mock run in the same window as the latency reference, and a prober asks
`/healthz` and `/readyz` every 50 ms. What counts: the admitted streams' added latency and
lost tokens, how fast and how clean each refusal is, and whether the probes stayed fast.
"""

from __future__ import annotations

import asyncio
import random
import time

from . import procs
from .clients import Tally, prompt
from .lab import Lab, Route
from .meter import Meter
from .plan import up_of
from .quantiles import latency_ms, percentile

PROBE_EVERY_S = 0.05
RETRY_AFTER_S = 1


async def measure(lab: Lab, tick) -> dict:
    plan = lab.plan
    capacity = plan.overload_capacity
    relay = await procs.start_relay(lab.workdir, lab.mock, name="overload-relay",
                                    limits={"max_active_streams": capacity, "overload_retry_after_s": RETRY_AFTER_S})
    try:
        route = lab.relay_route(plan.overload_combo, base=relay.base)
        direct = lab.vendor_route("direct", up_of(plan.overload_combo))
        admitted: list[Tally] = []
        refusals: list[tuple[float, bool]] = []  # (ms from request to refusal, a clean 503 overloaded)
        probes: dict[str, list[tuple[float, int]]] = {"healthz": [], "readyz": []}
        meter = Meter({"relay": [relay.pid]}).start()
        until = time.monotonic() + plan.overload_seconds
        clients = [_client(lab, route, until, admitted, refusals, i / plan.overload_capacity)
                   for i in range(2 * capacity)]
        references = [_client(lab, direct, until, [], [], 0.0) for _ in range(plan.probes)] if direct else []
        watch = [_probe(lab, relay.base, path, until, probes[path]) for path in probes]
        results = await asyncio.gather(*references, *clients, *watch)
        meter.stop()
        tick()
    finally:
        relay.stop()
    reference = [t for streams in results[:len(references)] for t in streams if t.error is None]
    return _report(plan, admitted, refusals, probes, reference, meter)


async def _client(lab: Lab, route: Route, until: float, admitted: list[Tally],
                  refusals: list[tuple[float, bool]], delay_s: float) -> list[Tally]:
    """One client that keeps trying to hold a stream until `until`; returns its streams."""
    plan = lab.plan
    mine: list[Tally] = []
    await asyncio.sleep(delay_s)  # clients arrive over about 2 s, not as one burst
    while time.monotonic() < until:
        tally = Tally(plan.tokens)
        phase_ms = random.random() * plan.interval_ms
        try:
            await asyncio.wait_for(route.run(lab.session, prompt(plan.tokens, plan.interval_ms, phase_ms), tally,
                                             lambda: None), plan.tokens * plan.interval_ms / 1000 + 30)
        except Exception as exc:  # noqa: BLE001  a failed stream is a result
            tally.error = tally.error or f"{type(exc).__name__}: {exc}"[:200]
        if tally.error and tally.error.startswith("HTTP 503"):
            refusals.append(((time.monotonic_ns() - tally.sent_ns) / 1e6, '"overloaded"' in tally.error))
            await asyncio.sleep(RETRY_AFTER_S * random.uniform(0.5, 1.5))
            continue
        mine.append(tally)
        admitted.append(tally)
    return mine


async def _probe(lab: Lab, base: str, path: str, until: float, out: list[tuple[float, int]]) -> None:
    while time.monotonic() < until:
        sent = time.monotonic_ns()
        async with lab.session.get(f"{base}/{path}") as response:
            await response.read()
            out.append(((time.monotonic_ns() - sent) / 1e6, response.status))
        await asyncio.sleep(PROBE_EVERY_S)


def _report(plan, admitted: list[Tally], refusals, probes, reference: list[Tally], meter: Meter) -> dict:
    served = [t for t in admitted if t.error is None]
    relay = latency_ms([ns for t in served for ns in t.lat_ns])
    direct = latency_ms([ns for t in reference for ns in t.lat_ns])
    refusal_ms = sorted(ms for ms, _ in refusals)
    return {
        "combo": plan.overload_combo, "capacity": plan.overload_capacity, "offered": 2 * plan.overload_capacity,
        "seconds": plan.overload_seconds,
        "admitted": len(admitted), "failed": len(admitted) - len(served),
        "first_failure": next((t.error for t in admitted if t.error), None),
        "lost": sum(t.lost for t in served), "tokens": sum(t.count for t in served),
        "relay": relay, "direct": direct,
        "added": {p: _minus(relay.get(p), direct.get(p)) for p in ("p50", "p99", "p99.9")},
        "refusals": {"n": len(refusals), "clean": sum(ok for _, ok in refusals), **_ms(refusal_ms)},
        "probes": {path: {**_ms(sorted(ms for ms, _ in samples)), "n": len(samples),
                          "not_200": sum(status != 200 for _, status in samples)}
                   for path, samples in probes.items()},
        "relay_pct_core": round(meter.pct("relay") or 0, 1),
    }


def _ms(ordered: list[float]) -> dict:
    """p50/p99/max of already sorted milliseconds."""
    return {"p50": _round(percentile(ordered, 50)), "p99": _round(percentile(ordered, 99)),
            "max": _round(ordered[-1] if ordered else None)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)
