"""The burst case: one stream of N tokens sent as fast as possible, per route, in shuffled order.

Tokens/s = (tokens - 1) / (last receipt - first receipt); CPU per token of whoever relays
(the relay, nginx) or sends (the mock, for direct streams); the relay's ratio to nginx is
taken within each repetition (docs/measuring.md, "Burst").
"""

from __future__ import annotations

import random

from .clients import prompt
from .fleet import Fleet
from .lab import Lab, Route
from .meter import Meter
from .plan import up_of
from .quantiles import latency_ms, spread


async def _one(lab: Lab, route: Route) -> dict:
    plan = lab.plan
    fleet = Fleet(lab.session)
    meter = Meter({route.role: lab.pids(route.role, route.label)}).start()  # @redis: relay + redis-server
    tally = fleet.launch(route, lambda: prompt(plan.burst_tokens, 0.0), plan.burst_tokens)
    await fleet.finish(60.0)
    meter.stop()
    span = (tally.last_ns - tally.first_ns) / 1e9
    return {"tokens_per_s": (tally.count - 1) / span if span > 0 and tally.count > 1 else None,
            "us_per_token": meter.per_token_us(route.role, tally.count),
            "lost": tally.lost, "error": tally.error, "lat": tally.lat_ns}


async def measure(lab: Lab, tick) -> dict:
    plan = lab.plan
    transports = sorted({up_of(c) for c in plan.combos})
    routes = [lab.relay_route(c) for c in plan.combos]
    routes += [r for t in transports for r in (lab.vendor_route("direct", t), lab.vendor_route("nginx", t)) if r]
    runs: dict[str, list[dict]] = {r.label: [] for r in routes}
    ratios: dict[str, list[float]] = {c: [] for c in plan.combos}
    for route in routes:  # warm-up
        await _one(lab, route)
    for _ in range(plan.burst_reps):
        random.shuffle(routes)
        rep = {route.label: await _one(lab, route) for route in routes}
        for label, result in rep.items():
            runs[label].append(result)
        for combo in plan.combos:
            nginx = rep.get(f"nginx-{up_of(combo)}")
            if nginx and nginx["us_per_token"] and rep[combo]["us_per_token"]:
                ratios[combo].append(rep[combo]["us_per_token"] / nginx["us_per_token"])
        tick()
    out = {}
    for label, results in runs.items():
        out[label] = {
            "tokens_per_s": spread([r["tokens_per_s"] for r in results], 0),
            "us_per_token": spread([r["us_per_token"] for r in results]),
            "ratio_to_nginx": spread(ratios.get(label, [])),
            "latency_ms": latency_ms(sorted(lat for r in results for lat in r["lat"])),
            "lost": sum(r["lost"] for r in results),
            "errors": sum(r["error"] is not None for r in results),
            "role": "relay" if label in ratios else label.split("-")[0],
        }
    return out

