"""Fold the per-window records into per-(combination, level) medians with min–max, and pooled distributions."""

from __future__ import annotations

from collections import defaultdict

from .plan import base_of, engine_of
from .quantiles import curve_ms, latency_ms, spread

SUSPECT_PROBE = 1.5     # a window whose speed probe is this much slower than the run's fastest
SUSPECT_BUSY = 150.0    # or whose box was busier than this (% of one core, out of 200)
SUSPECT_OTHER = 30.0    # or where processes outside the bench took this much (% of one core)


def _get(record: dict, path: str):
    value = record
    for key in path.split(".", 1):  # one level deep: "added.p99.9" is added["p99.9"]
        value = (value or {}).get(key)
    return value


METRICS = {  # summary key -> path in a window record
    "added_p50_ms": "added.p50", "added_p99_ms": "added.p99", "added_p999_ms": "added.p99.9",
    "relay_p50_ms": "relay.p50", "relay_p99_ms": "relay.p99",
    "direct_p50_ms": "direct.p50", "direct_p99_ms": "direct.p99",
    "nginx_added_p50_ms": "nginx_added.p50", "nginx_added_p99_ms": "nginx_added.p99",
    "relay_us_per_token": "cpu.relay_us_per_token", "nginx_us_per_token": "cpu.nginx_us_per_token",
    "ratio_to_nginx": "cpu.ratio_to_nginx", "relay_pct_core": "cpu.relay_pct_core",
    "redis_pct_core": "cpu.redis_pct_core", "redis_us_per_token": "cpu.redis_us_per_token",
    "tokens_per_s_per_core": "cpu.tokens_per_s_per_core", "relay_tokens_per_s": "cpu.relay_tokens_per_s",
    "mock_pct_core": "cpu.mock_pct_core", "bench_pct_core": "cpu.bench_pct_core",
    "idle_kib_per_stream": "mem.idle_kib_per_stream", "active_kib_per_stream": "mem.active_kib_per_stream",
    "box_busy_pct": "noise.box_busy_pct",
}


def paced(windows: list[dict]) -> dict:
    """{combo: {level: {metric: {median, min, max, n}, lost, errors}}}, levels as strings (JSON keys)."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for record in windows:
        groups[record["combo"], record["level"]].append(record)
    out: dict = defaultdict(dict)
    for (combo, level), records in sorted(groups.items()):
        cell = {key: spread(_get(r, path) for r in records) for key, path in METRICS.items()}
        for role in ("relay", "direct", "nginx"):
            cell[f"{role}_lost"] = sum((r[role] or {}).get("lost", 0) for r in records)
            cell[f"{role}_errors"] = sum((r[role] or {}).get("errors", 0) for r in records)
        cell["first_error"] = next((r[role]["first_error"] for r in records for role in ("relay", "direct", "nginx")
                                    if r[role] and r[role].get("first_error")), None)
        cell["reps"] = len(records)
        out[combo][str(level)] = cell
    return dict(out)


def distributions(pools: dict[tuple[str, int], dict[str, list[int]]]) -> dict:
    """{combo: {level: {role: {pooled percentiles, curve}}}} over all repetitions."""
    out: dict = defaultdict(dict)
    for (combo, level), roles in sorted(pools.items()):
        out[combo][str(level)] = {role: {**latency_ms(values), "curve_ms": curve_ms(values)}
                                  for role, values in roles.items() if values}
    return dict(out)


def disturbed(record: dict) -> bool:
    """Processes outside the bench took a sizeable share of the box during this window."""
    return (record["noise"].get("other_pct") or 0) > SUSPECT_OTHER


def noise(windows: list[dict]) -> dict:
    """The speed probe and box load over the run, and which windows look suspect."""
    probes = [w["noise"]["probe_ms"] for w in windows if w["noise"]["probe_ms"]]
    fastest = min(probes) if probes else None
    suspect = [f'{w["combo"]} x{w["level"]} rep {w["rep"] + 1}' for w in windows
               if (fastest and w["noise"]["probe_ms"] > SUSPECT_PROBE * fastest)
               or w["noise"]["box_busy_pct"] > SUSPECT_BUSY or (w["noise"].get("other_pct") or 0) > SUSPECT_OTHER]
    return {"probe_ms": spread(probes), "box_busy_pct": spread(w["noise"]["box_busy_pct"] for w in windows),
            "other_pct": spread(w["noise"].get("other_pct") for w in windows),
            "suspect_windows": suspect,
            "rule": f"probe > {SUSPECT_PROBE}x the fastest probe of the run, box busy > {SUSPECT_BUSY:g} % "
                    f"(of 200 % on 2 cores), or processes outside the bench > {SUSPECT_OTHER:g} % of a core"}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def front_door(windows: list[dict], door: str = "openai-sse", base: str = "sse-sse") -> dict:
    """The OpenAI front door against the plain SSE door over the same upstream, per level.

    Paired by repetition (one window of each per level and repetition): `ratio` = door's
    (relay µs/token ÷ nginx µs/token of its own window) ÷ base's same, so each side is
    normalised by the byte-relay floor measured beside it and the box's drift between the
    two windows cancels (docs/measuring.md, "Same-window references"); `raw_ratio` = the
    plain µs/token ratio of the pair, for when nginx is off or to judge the normalisation.
    `extra_p50_ms` / `extra_p99_ms` = door's added latency minus base's, per pair.
    """
    return paired(windows, door, base, ("door", "base"))


def engines(windows: list[dict]) -> dict:
    """{X@redis: {level: X@redis against X}}: the Redis engine against the memory engine, paired as the front
    door is; `extra_*` is the Redis engine's latency on top of the memory engine's, each against direct in its
    own window, and `ratio` its relay + Redis CPU per token over the memory relay's, each ÷ nginx."""
    combos = {w["combo"] for w in windows}
    return {c: out for c in sorted(combos) if engine_of(c) == "redis" and base_of(c) in combos
            and (out := paired(windows, c, base_of(c), ("redis", "memory")))}


def paired(windows: list[dict], one: str, other: str, names: tuple[str, str]) -> dict:
    """Combination `one` against `other`, per level, windows paired by repetition; keys named after `names`."""
    cells: dict[tuple[int, int], dict[str, dict]] = defaultdict(dict)
    for w in windows:
        if w["combo"] in (one, other):
            cells[w["level"], w["rep"]][w["combo"]] = w
    a, b = names
    out: dict = {}
    for level in sorted({lv for lv, _ in cells}):
        pairs = [c for (lv, _), c in sorted(cells.items()) if lv == level and one in c and other in c]
        if not pairs:
            continue
        cpu = lambda w, key: _get(w, f"cpu.{key}")  # noqa: E731
        out[str(level)] = {
            "ratio": spread(_ratio(cpu(p[one], "ratio_to_nginx"), cpu(p[other], "ratio_to_nginx")) for p in pairs),
            "raw_ratio": spread(_ratio(cpu(p[one], "relay_us_per_token"), cpu(p[other], "relay_us_per_token"))
                                for p in pairs),
            f"{a}_us_per_token": spread(cpu(p[one], "relay_us_per_token") for p in pairs),
            f"{b}_us_per_token": spread(cpu(p[other], "relay_us_per_token") for p in pairs),
            "extra_p50_ms": spread(_minus(_get(p[one], "added.p50"), _get(p[other], "added.p50")) for p in pairs),
            "extra_p99_ms": spread(_minus(_get(p[one], "added.p99"), _get(p[other], "added.p99")) for p in pairs),
            "pairs": len(pairs), a: one, b: other,
        }
    return out


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b
