"""The report as tables (title, header, rows of strings), shared by the terminal and the Markdown summary."""

from __future__ import annotations

from typing import NamedTuple

DASH = "—"


class Table(NamedTuple):
    title: str
    header: list[str]
    rows: list[list[str]]


def num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return DASH
    return f"{value:,.0f}" if digits == 0 else f"{value:.{digits}f}"


def med(stat: dict | None, digits: int = 2, span: bool = True) -> str:
    """`median (min–max)` of a spread, or just the median when there is one value or `span` is off."""
    if not stat:
        return DASH
    text = num(stat["median"], digits)
    if span and stat.get("n", 1) > 1:
        text += f" ({num(stat['min'], digits)}–{num(stat['max'], digits)})"
    return text


def pair(a: dict | None, b: dict | None, digits: int = 2) -> str:
    return f"{med(a, digits, False)} / {med(b, digits, False)}"


def paced(report: dict) -> Table:
    rows = []
    for combo, levels in (report.get("paced") or {}).get("summary", {}).items():
        for level, c in sorted(levels.items(), key=lambda kv: int(kv[0])):
            rows.append([combo, level, med(c["added_p50_ms"]), med(c["added_p99_ms"]),
                         pair(c["relay_p50_ms"], c["relay_p99_ms"]), pair(c["direct_p50_ms"], c["direct_p99_ms"]),
                         med(c["nginx_added_p99_ms"], 2, False), med(c["relay_us_per_token"], 1, False),
                         med(c["ratio_to_nginx"]), med(c["relay_pct_core"], 0, False),
                         pair(c["idle_kib_per_stream"], c["active_kib_per_stream"], 1),
                         f'{c["relay_lost"]}/{c["relay_errors"]}'])
    plan = report["plan"]
    return Table(f"Paced: N relayed streams at {1000 / plan['interval_ms']:g} tok/s each, {plan['tokens']} tokens, "
                 f"{plan['reps']} rep(s) in shuffled order; median (min–max) over windows; "
                 f"added = relay − direct in the same window",
                 ["combo", "streams", "added p50 ms", "added p99 ms", "relay p50/p99 ms", "direct p50/p99 ms",
                  "nginx added p99", "relay µs/token", "× nginx", "relay CPU %", "KiB/stream idle/active",
                  "lost/err"], rows)


def ttft(report: dict) -> Table:
    data = report.get("ttft") or {}
    added = data.get("added_p50_ms", {})
    rows = [[label, num(r.get("p50")), num(r.get("p90")), num(r.get("p99")), str(r.get("n", 0)),
             num(added.get(label)), str(r.get("errors", 0))] for label, r in data.get("routes", {}).items()]
    return Table("Time to first token, sequential requests (ms)",
                 ["route", "p50", "p90", "p99", "n", "added p50 vs direct", "errors"], rows)


def burst(report: dict) -> Table:
    rows = [[label, med(r["tokens_per_s"], 0), med(r["us_per_token"], 1), med(r["ratio_to_nginx"]),
             num(r["latency_ms"].get("p50")), num(r["latency_ms"].get("p99")), f'{r["lost"]}/{r["errors"]}']
            for label, r in (report.get("burst") or {}).items()]
    plan = report["plan"]
    return Table(f"Burst: 1 stream x {plan['burst_tokens']} tokens, no pacing, {plan['burst_reps']} rep(s)",
                 ["route", "tokens/s", "CPU µs/token", "× nginx (same rep)", "p50 ms", "p99 ms", "lost/err"], rows)


def stop(report: dict) -> Table:
    rows = [[combo, r.get("stopped_by", "cancel"), str(r["n"]), num(r["p50"]), num(r["p99"]), num(r["max"]),
             str(r["not_closed"]), str(r["cancel_refused"])] for combo, r in (report.get("stop") or {}).items()]
    return Table("Stop → provider connection closed (ms): cancel = `POST /v1/streams/{id}/cancel` to the mock's "
                 "closed_at; client close = the client closes its connection (openai-*: the front door has no "
                 "cancel by id; direct-*: how fast the mock notices a close at all)",
                 ["combo", "stopped by", "n", "p50", "p99", "max", "not closed", "cancel refused"], rows)


def front_door(report: dict) -> Table:
    door = (report.get("paced") or {}).get("front_door") or {}
    rows = [[c["door"], c["base"], level, med(c["door_us_per_token"], 1), med(c["base_us_per_token"], 1),
             med(c["raw_ratio"]), med(c["ratio"]), med(c["extra_p50_ms"]), med(c["extra_p99_ms"]), str(c["pairs"])]
            for level, c in sorted(door.items(), key=lambda kv: int(kv[0]))]
    return Table("OpenAI front door vs plain SSE door, same upstream: windows paired by repetition; "
                 "× nginx-normalised = (relay ÷ nginx µs/token of its own window) of one over the other; "
                 "extra = its added latency minus the other's",
                 ["combo", "vs", "streams", "relay µs/token", "vs µs/token", "raw ratio", "× nginx-normalised ratio",
                  "extra added p50 ms", "extra added p99 ms", "pairs"], rows)


def goals(report: dict) -> Table:
    verdict = {True: "met", False: "MISSED", None: "n/a"}
    rows = [[g["goal"], g["target"], g["measured"],
             verdict[g["met"]] + (f" ({', '.join(g['missed'])})" if g["missed"] else "")]
            for g in report.get("goals", [])]
    return Table("Goals (issue 4)", ["goal", "target", "measured", "verdict"], rows)


def all_tables(report: dict) -> list[Table]:
    tables = [paced(report), front_door(report), ttft(report), burst(report), stop(report), goals(report)]
    return [t for t in tables if t.rows]
