"""`matrix serve --workers N` at saturation: delivered tokens/s of unpaced streams for each N, and what ran out of CPU.

For each N (shuffled per repetition) the phase starts `matrix serve --workers N` on the
Redis engine (the bench's redis-server, emptied first, a key prefix of its own) and keeps
`workers_streams` clients busy: each starts a stream whose tokens come as fast as the
source sends them (`#mock tokens=N interval_ms=0`), reads it to the end and starts the
next. Tokens delivered to the clients are counted over `workers_seconds` once the streams
have ramped up, and every process's CPU is read over the same span: on this 2-core box the
workers, Redis, the source and the bench share two cores, so each result names what was
saturated. The source is bench/firehose.py by default: the mock costs about as much CPU
per token as the relay, and would saturate the box before a second worker could show what
it adds (docs/measuring.md, "The load generator must be cheap"); `--workers-source mock`
measures with the mock all the same.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter

import aiohttp

from . import procs
from .clients import Tally, prompt
from .lab import Lab, Route
from .meter import Meter
from .quantiles import spread

RAMP_S = 1.0            # every client streaming (and the workers' pools warm) before the count starts
WARM_STREAMS = 4        # short streams per worker first: imports, upstream pools, Redis scripts
SATURATED_PCT = 90.0    # a one-thread process this busy (% of one core) has nothing more to give
BOX_SATURATED = 0.95    # the box this busy (share of all its cores) has nothing more to give


def _nothing() -> None:
    pass


class Counted(Tally):
    """A tally that counts stamps and keeps no latencies: at a few hundred thousand tokens/s, one Python
    int per token would make the bench a busy process of its own."""

    tokens = 0

    def _got(self, stamps: list, now: int) -> None:
        if stamps:
            self.tokens += len(stamps)
            self.first_ns = self.first_ns or now
            self.last_ns = now

    @property
    def count(self) -> int:
        return self.tokens


async def _client(session: aiohttp.ClientSession, route: Route, text: str, expected: int,
                  tallies: list[Tally]) -> None:
    """One client: a stream, read to its end, then the next, until cancelled."""
    while True:
        tally = Counted(expected)
        tallies.append(tally)
        try:
            await route.run(session, text, tally, _nothing)
        except (aiohttp.ClientError, OSError) as exc:  # a failed stream is counted, the client goes on
            tally.error = tally.error or f"{type(exc).__name__}: {exc}"[:200]
            await asyncio.sleep(0.05)


def _delivered(tallies: list[Tally]) -> int:
    return sum(tally.count for tally in tallies)


def _saturated(meter: Meter, serving: list[int], singles: dict[str, list[int]]) -> list[str]:
    """What had no CPU to spare: workers (each one thread), Redis, the source, the bench, or the whole box."""
    busy = sum(meter.pid_pct(pid) >= SATURATED_PCT for pid in serving)
    out = [f"{busy}/{len(serving)} worker(s)"] if busy else []
    out += [name for name, pids in singles.items() if any(meter.pid_pct(pid) >= SATURATED_PCT for pid in pids)]
    if meter.own_pct >= SATURATED_PCT:
        out.append("bench")
    if meter.box_pct >= BOX_SATURATED * 100 * (os.cpu_count() or 1):
        out.append("box")
    return out


async def _one(lab: Lab, workers: int) -> dict:
    plan = lab.plan
    assert lab.redis is not None and lab.mock is not None
    source = lab.firehose or lab.mock
    await procs.redis_command(lab.redis, "FLUSHALL")  # no earlier run's keys expiring during this one
    proc = await procs.start_workers(lab.workdir, source, lab.redis, workers)
    tasks: list[asyncio.Task] = []
    try:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            # The firehose speaks OpenAI's chat completions only: the SSE vendor, whatever --sse-upstream says.
            route = lab.relay_route(plan.workers_combo, proc.base, "openai" if lab.firehose else None)
            warm = [Counted(20) for _ in range(WARM_STREAMS * workers)]
            await asyncio.gather(*(route.run(session, prompt(20, 0.0), t, _nothing) for t in warm),
                                 return_exceptions=True)
            tallies: list[Tally] = []
            text = prompt(plan.workers_tokens, 0.0)
            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(_client(session, route, text, plan.workers_tokens, tallies))
                     for _ in range(plan.workers_streams)]
            await asyncio.sleep(RAMP_S)
            pids = proc.pids()
            supervisor = pids[:1] if workers > 1 else []  # `--workers 1` is one relay, no supervisor
            serving = pids[1:] if workers > 1 else pids
            standby = [pid for relay in lab.relays.values() for pid in relay.pids()]
            others = {"mock": lab.mock.pids()} if lab.firehose else {}  # idle, metered
            meter = Meter({"relay": pids, "redis": lab.redis.pids(), "source": source.pids(), **others,
                           **({"standby": standby} if standby else {})}).start()
            before = _delivered(tallies)
            await asyncio.sleep(plan.workers_seconds)
            delivered = _delivered(tallies) - before
            meter.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for task in tasks:
            task.cancel()
        proc.terminate()
        await proc.reap(10.0)
    seconds = meter.ns / 1e9
    finished = [t for t in tallies if t.ended or t.error]
    return {
        "workers": workers, "source": source.name, "seconds": round(seconds, 3), "tokens": delivered,
        "tokens_per_s": round(delivered / seconds), "streams_finished": len(finished),
        "errors": sum(t.error is not None for t in finished),
        "first_error": next((t.error for t in finished if t.error), None),
        "relay_us_per_token": round(meter.cpu("relay") / 1e3 / delivered, 3) if delivered else None,
        "cpu_pct": {"relay": round(meter.pct("relay"), 1),
                    "per_worker": [round(meter.pid_pct(pid), 1) for pid in serving],
                    "supervisor": round(sum(meter.pid_pct(pid) for pid in supervisor), 1) if supervisor else None,
                    "redis": round(meter.pct("redis"), 1), "source": round(meter.pct("source"), 1),
                    "bench": round(meter.own_pct, 1), "box": round(meter.box_pct, 1),
                    "other": round(meter.other_pct, 1)},
        "saturated": _saturated(meter, serving, {"redis": lab.redis.pids(), source.name: source.pids()}),
    }


async def measure(lab: Lab, tick) -> dict:
    """Per N: delivered tokens/s (median, min–max over repetitions) and CPU; per N > the first: its
    tokens/s over the first N's, paired by repetition."""
    plan = lab.plan
    runs: list[dict] = []
    for rep in range(plan.workers_reps):
        order = list(plan.workers)
        random.shuffle(order)
        pair = {}
        for n in order:
            pair[n] = await _one(lab, n)
            pair[n]["rep"] = rep
            runs.append(pair[n])
            tick()
        first = plan.workers[0]
        for n in plan.workers[1:]:
            pair[n]["ratio"] = round(pair[n]["tokens_per_s"] / pair[first]["tokens_per_s"], 3) \
                if pair[first]["tokens_per_s"] else None
    by: dict[str, dict] = {}
    for n in plan.workers:
        mine = [r for r in runs if r["workers"] == n]
        by[str(n)] = {
            "tokens_per_s": spread((r["tokens_per_s"] for r in mine), 0),
            "ratio": spread(r.get("ratio") for r in mine),
            "relay_us_per_token": spread(r["relay_us_per_token"] for r in mine),
            **{f"{role}_pct": spread((r["cpu_pct"][role] for r in mine), 1)
               for role in ("relay", "redis", "source", "bench", "box")},
            "saturated": dict(Counter(s for r in mine for s in r["saturated"])),  # what, in how many reps
            "errors": sum(r["errors"] for r in mine), "reps": len(mine),
        }
    return {"combo": plan.workers_combo, "source": plan.workers_source, "streams": plan.workers_streams,
            "tokens": plan.workers_tokens, "seconds": plan.workers_seconds, "by_workers": by, "runs": runs}
