"""One paced window: S relayed streams and the direct and nginx reference streams, all in the same time window.

Every stream is opened first and held idle (idle RSS is read then); all first tokens are
scheduled for one instant t0 with a random phase per stream, and CPU is read from t0 to
the end of the last stream (docs/measuring.md, "Same-window references").
"""

from __future__ import annotations

import asyncio
import random
import time

from .clients import Tally, prompt
from .fleet import Fleet
from .lab import Lab, Route
from .meter import Meter
from .plan import engine_of, up_of
from .quantiles import latency_ms
from .sysstat import noise_probe_ms, rss_kib_of

OPEN_COST_S = 0.006     # time budgeted to open one stream (both hops) before the idle hold
WARM_STREAMS = 2        # per route, before the RSS baseline
ROLES = ("relay", "redis", "standby", "direct", "nginx")  # metered in every window (lab.pids)


async def warm_up(lab: Lab, routes: list[Route]) -> int:
    """A few short streams on every route; returns how many failed."""
    fleet = Fleet(lab.session)
    for route in routes:
        for _ in range(WARM_STREAMS):
            fleet.launch(route, lambda: prompt(5, 2.0), 5)
    await fleet.finish(15.0)
    return sum(tally.error is not None for _, tally, _ in fleet.flights)


def references(lab: Lab, combo: str) -> list[Route]:
    transport = up_of(combo)
    return [r for r in (lab.vendor_route("direct", transport), lab.vendor_route("nginx", transport)) if r]


async def _sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


async def _peak_rss(pids: list[int], peak: list[int]) -> None:
    while True:
        peak[0] = max(peak[0], rss_kib_of(pids))
        await asyncio.sleep(0.05)


def _side(tallies: list[Tally]) -> tuple[dict, list[int]]:
    pooled = [lat for tally in tallies for lat in tally.lat_ns]
    stats = latency_ms(pooled)
    stats.update(streams=len(tallies), tokens=len(pooled), lost=sum(t.lost for t in tallies),
                 errors=sum(t.error is not None for t in tallies),
                 first_error=next((t.error for t in tallies if t.error), None))
    return stats, pooled


def _minus(a: dict | None, b: dict | None, key: str) -> float | None:
    if not a or not b or a.get(key) is None or b.get(key) is None:
        return None
    return round(a[key] - b[key], 4)


async def _open_and_hold(lab: Lab, streams: list[tuple[Route, int]]) -> tuple[Fleet, int, bool]:
    """Open every stream with its first token due at t0 (+ a random phase); wait until all are open."""
    plan = lab.plan
    fleet = Fleet(lab.session)
    total = sum(n for _, n in streams)
    t0 = time.monotonic_ns() + int((0.2 + total * OPEN_COST_S + plan.hold_s) * 1e9)
    for route, count in streams:
        for _ in range(count):
            phase = random.random() * plan.interval_ms * 1e6

            def text(phase: float = phase) -> str:
                return prompt(plan.tokens, plan.interval_ms, max(0.0, (t0 + phase - time.monotonic_ns()) / 1e6))
            fleet.launch(route, text, plan.tokens)
    all_open = await fleet.wait_open(t0 - int(plan.hold_s / 2 * 1e9))
    await _sleep_until(min(time.monotonic_ns() + 150_000_000, t0 - 50_000_000))  # let the last ones settle
    return fleet, t0, all_open


async def window(lab: Lab, combo: str, level: int, rep: int) -> tuple[dict, dict[str, list[int]]]:
    """Run one window; returns its record and the pooled latencies (ns) per role."""
    plan = lab.plan
    if plan.fresh_relay:
        await lab.restart_relay(engine_of(combo))
    started = time.monotonic()
    relay = lab.relay_route(combo)
    refs = references(lab, combo)
    warm_errors = await warm_up(lab, [relay, *refs])
    relay_pids = lab.pids("relay", combo)  # @redis: redis-server's RSS too
    await asyncio.sleep(0.05)
    rss = {"base": rss_kib_of(relay_pids)}
    probe = noise_probe_ms()

    fleet, t0, all_open = await _open_and_hold(lab, [(relay, level)] + [(ref, plan.probes) for ref in refs])
    rss["idle"] = rss_kib_of(relay_pids)
    await _sleep_until(t0 - 5_000_000)
    meter = Meter({role: pids for role in ROLES if (pids := lab.pids(role, combo))}).start()
    peak = [rss["idle"]]
    sampler = asyncio.get_running_loop().create_task(_peak_rss(relay_pids, peak))
    await fleet.finish(plan.tokens * plan.interval_ms / 1000 + len(fleet.flights) * OPEN_COST_S + 20.0)
    meter.stop()
    sampler.cancel()
    rss["peak"] = peak[0]

    sides, pools = {}, {}
    for role in ("relay", "direct", "nginx"):
        tallies = fleet.tallies(role)
        sides[role], pools[role] = _side(tallies) if tallies else (None, [])
    record = _record(combo, level, rep, sides, meter, rss, all_open)
    record.update(warmup_errors=warm_errors, wall_s=round(time.monotonic() - started, 2))
    record["noise"]["probe_ms"] = _round(probe)
    return record, pools


def _record(combo: str, level: int, rep: int, sides: dict, meter: Meter, rss: dict, all_open: bool) -> dict:
    tokens = {role: (side or {}).get("tokens", 0) for role, side in sides.items()}
    relay_us, nginx_us = meter.per_token_us("relay", tokens["relay"]), meter.per_token_us("nginx", tokens["nginx"])
    seconds = meter.ns / 1e9
    on_redis = engine_of(combo) == "redis"  # the relay role holds redis-server too: its share, apart
    return {
        "combo": combo, "level": level, "rep": rep, "seconds": round(seconds, 3),
        "relay": sides["relay"], "direct": sides["direct"], "nginx": sides["nginx"],
        "added": {p: _minus(sides["relay"], sides["direct"], p) for p in ("p50", "p99", "p99.9")},
        "nginx_added": {p: _minus(sides["nginx"], sides["direct"], p) for p in ("p50", "p99")},
        "cpu": {
            "relay_us_per_token": _round(relay_us),
            "relay_pct_core": _round(meter.pct("relay")),
            "redis_pct_core": _round(meter.pct("redis")) if on_redis else None,
            "redis_us_per_token": _round(meter.per_token_us("redis", tokens["relay"])) if on_redis else None,
            "tokens_per_s_per_core": _round(1e6 / relay_us if relay_us else None, 0),
            "nginx_us_per_token": _round(nginx_us),
            "ratio_to_nginx": _round(relay_us / nginx_us if relay_us and nginx_us else None),
            "mock_pct_core": _round(meter.pct("direct")),
            "bench_pct_core": _round(meter.own_pct),
            "relay_tokens_per_s": _round(tokens["relay"] / seconds if seconds else None, 0),
        },
        "mem": {
            "base_kib": rss["base"],
            "idle_kib_per_stream": _round((rss["idle"] - rss["base"]) / level) if all_open else None,
            "active_kib_per_stream": _round((rss["peak"] - rss["base"]) / level),
            "all_open_before_t0": all_open,
        },
        "noise": {"box_busy_pct": _round(meter.box_pct, 1), "other_pct": _round(meter.other_pct, 1)},
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
