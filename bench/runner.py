"""Run a plan: paced windows in shuffled order per repetition, then TTFT, burst, stop, store, overload, workers."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import defaultdict

from . import burst, goals, meta, overload, paced, stop, store, summary, ttft, workers
from .lab import Lab
from .plan import FRONT_DOOR, FRONT_DOOR_BASE, Plan
from .progress import Progress


def steps(plan: Plan) -> int:
    """Progress units: paced windows, TTFT rounds, burst reps, stop combinations, store turns, workers runs."""
    n = 0
    if "paced" in plan.phases:
        n += plan.reps * len(plan.combos) * len(plan.levels)
    if "ttft" in plan.phases:
        n += plan.ttft_requests
    if "burst" in plan.phases:
        n += plan.burst_reps
    if "stop" in plan.phases:
        n += len(plan.combos)
    if "store" in plan.phases:
        n += plan.store_turns
    if "overload" in plan.phases:
        n += 1
    if "workers" in plan.phases:
        n += plan.workers_reps * len(plan.workers)
    return n


async def _paced(lab: Lab, progress: Progress) -> dict:
    plan = lab.plan
    windows: list[dict] = []
    discarded: list[dict] = []
    pools: dict[tuple[str, int], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for rep in range(plan.reps):
        order = [(c, lv) for c in plan.combos for lv in plan.levels]
        random.shuffle(order)
        for combo, level in order:
            progress.show(f"paced {combo} x{level} rep {rep + 1}/{plan.reps}")
            record, pooled = await paced.window(lab, combo, level, rep)
            while summary.disturbed(record) and len(discarded) < plan.retries:
                discarded.append({k: record[k] for k in ("combo", "level", "rep", "noise")})
                progress.show(f"paced {combo} x{level} rep {rep + 1}/{plan.reps} (again: the box was busy)")
                record, pooled = await paced.window(lab, combo, level, rep)
            windows.append(record)
            for role, values in pooled.items():
                pools[combo, level][role].extend(values)
            progress.tick()
    return {"summary": summary.paced(windows), "noise": {**summary.noise(windows), "discarded": discarded},
            "front_door": summary.front_door(windows, FRONT_DOOR, FRONT_DOOR_BASE),
            "engines": summary.engines(windows),
            "distributions": summary.distributions(pools), "windows": windows}


async def run(plan: Plan, progress: Progress) -> dict:
    started = time.monotonic()
    report: dict = {"meta": meta.collect(), "plan": {**dataclasses.asdict(plan), "gate_level": plan.gate_level,
                                                      "load_level": plan.load_level}}
    async with asyncio.timeout(plan.budget_s):
        async with Lab(plan) as lab:
            report["nginx_reference"] = lab.nginx is not None
            report["redis"] = lab.redis is not None
            timing = report["phase_seconds"] = {"start": round(time.monotonic() - started, 1)}
            if "paced" in plan.phases:
                mark = time.monotonic()
                report["paced"] = await _paced(lab, progress)
                timing["paced"] = round(time.monotonic() - mark, 1)
            if {"ttft", "burst", "stop"} & set(plan.phases):
                await lab.restart_relays()
            for name, module in (("ttft", ttft), ("burst", burst), ("stop", stop), ("store", store),
                                 ("overload", overload), ("workers", workers)):
                if name in plan.phases:
                    progress.show(name)
                    mark = time.monotonic()
                    report[name] = await module.measure(lab, progress.tick)
                    timing[name] = round(time.monotonic() - mark, 1)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["goals"] = goals.evaluate(report)
    return report
