"""The report as tables (title, header, rows of strings), shared by the terminal and the Markdown summary."""

from __future__ import annotations

from typing import NamedTuple

from .plan import engine_of

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
            rows.append([combo, level, med(c["added_p50_ms"]), med(c["added_p99_ms"]), med(c.get("added_p999_ms")),
                         pair(c["relay_p50_ms"], c["relay_p99_ms"]), pair(c["direct_p50_ms"], c["direct_p99_ms"]),
                         med(c["nginx_added_p99_ms"], 2, False), med(c["relay_us_per_token"], 1, False),
                         med(c["ratio_to_nginx"]), med(c["relay_pct_core"], 0, False),
                         pair(c["idle_kib_per_stream"], c["active_kib_per_stream"], 1),
                         f'{c["relay_lost"]}/{c["relay_errors"]}'])
    plan = report["plan"]
    return Table(f"Paced: N relayed streams at {1000 / plan['interval_ms']:g} tok/s each, {plan['tokens']} tokens, "
                 f"{plan['reps']} rep(s) in shuffled order; median (min–max) over windows; "
                 f"added = relay − direct in the same window; @redis = the Redis engine, its relay's CPU and "
                 f"memory counted with redis-server's",
                 ["combo", "streams", "added p50 ms", "added p99 ms", "added p99.9 ms", "relay p50/p99 ms",
                  "direct p50/p99 ms",
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


def engines(report: dict) -> Table:
    summary = (report.get("paced") or {}).get("summary") or {}
    pairs = (report.get("paced") or {}).get("engines") or {}
    rows = []
    for combo, levels in summary.items():
        if engine_of(combo) != "redis":
            continue
        for level, c in sorted(levels.items(), key=lambda kv: int(kv[0])):
            p = (pairs.get(combo) or {}).get(level) or {}
            rows.append([combo, level, med(c["added_p50_ms"]), med(p.get("extra_p50_ms")), med(c["added_p99_ms"]),
                         med(p.get("extra_p99_ms")), med(c["relay_us_per_token"], 1, False),
                         med(c.get("redis_us_per_token"), 1, False), med(p.get("memory_us_per_token"), 1, False),
                         med(p.get("ratio")), med(c["ratio_to_nginx"]), med(c.get("redis_pct_core"), 0, False),
                         str(p.get("pairs", 0))])
    return Table("Redis engine vs memory engine, same combination: extra = X@redis's added latency (vs direct, "
                 "its own window) minus X's, paired by repetition; CPU of relay + redis-server; × memory = "
                 "(µs/token ÷ nginx µs/token of its own window) of one over the other",
                 ["combo", "streams", "added p50 ms", "extra p50 vs memory", "added p99 ms", "extra p99 vs memory",
                  "relay+Redis µs/token", "of which Redis", "memory µs/token", "× memory", "× nginx", "Redis CPU %",
                  "pairs"], rows)


def workers(report: dict) -> Table:
    data = report.get("workers") or {}
    rows = [[n, med(c["tokens_per_s"], 0), med(c["ratio"]), med(c["relay_us_per_token"], 1, False),
             med(c["relay_pct"], 0, False), med(c["redis_pct"], 0, False), med(c["source_pct"], 0, False),
             med(c["bench_pct"], 0, False), med(c["box_pct"], 0, False),
             ", ".join(f"{k} ×{v}" for k, v in c["saturated"].items()) or "nothing", str(c["errors"])]
            for n, c in (data.get("by_workers") or {}).items()]
    return Table(f"`matrix serve --workers N` at saturation: {data.get('streams')} clients each streaming "
                 f"{data.get('combo')} answers of {data.get('tokens')} tokens sent as fast as the {data.get('source')} "
                 f"can, Redis engine, {data.get('seconds')} s counted per run; median (min–max) over repetitions; "
                 "CPU in % of one core (the box has 200); saturated = a process ≥ 90 % of a core, or the box "
                 "≥ 95 % busy",
                 ["workers", "tokens/s", "× 1 worker", "relay µs/token", "relay CPU %", "Redis %",
                  f"{data.get('source')} %",
                  "bench %", "box %", "saturated (runs)", "errors"], rows)


def store(report: dict) -> Table:
    data = report.get("store")
    if not data:
        return Table("", [], [])
    rows = []
    for name, cell in data["stores"].items():
        if cell.get("skipped"):
            rows.append([name, DASH, f"skipped: {cell['skipped']}", *[DASH] * 7])
        for combo, c in (cell.get("by_combo") or {}).items():
            plain, conv, added, back = c["plain"], c["conversation"], c["added"], c["readback"]
            rows.append([name, combo, _p50_p99(plain["ttft"]), _p50_p99(conv["ttft"]),
                         *(f'{num(added[f"{m}_p50_ms"])} / {num(added[f"{m}_p99_ms"])}'
                           for m in ("ttft", "last_token", "done_after_last_token")),
                         f'{num(plain["done_after_last_delta"]["p50"])} / {num(conv["done_after_last_delta"]["p50"])}',
                         f'{conv["ttft"]["n"]} + {plain["ttft"]["n"]} / {conv["errors"]} + {plain["errors"]}',
                         f'{back["complete"]}/{back["conversations"]}, {back["history_seen"]}/{back["answers"]}'])
    noise = data.get("noise") or {}
    return Table(f"Conversation store (ms): sequential requests on a relay per store, shuffled; conversation = "
                 f"continues one of {data['conversations']} conversations by a turn ({data['turns']} turns, history up "
                 f"to {data['history_messages']} messages), plain = names none; added = conversation − plain; last "
                 "token = provider sent → client received; done = provider's last token sent → `done` received (the "
                 "answer is saved in between); readback = conversations holding every turn, answers whose provider "
                 f"received the whole history (its prompt_tokens); box {num(noise.get('box_busy_pct'), 0)} % busy "
                 f"of 200, outside the bench {num(noise.get('other_pct'), 0)} %",
                 ["store", "combo", "plain TTFT p50/p99", "conversation TTFT p50/p99", "TTFT added p50/p99",
                  "last token added p50/p99", "done added p50/p99", "last delta → done p50 plain/conversation",
                  "n conv + plain / errors", "readback"], rows)


def _p50_p99(stat: dict) -> str:
    return f'{num(stat.get("p50"))} / {num(stat.get("p99"))}'


def overload(report: dict) -> Table:
    data = report.get("overload")
    if not data:
        return Table("", [], [])
    refused, probes = data["refusals"], data["probes"]
    rows = [[data["combo"], str(data["capacity"]), str(data["offered"]), str(data["admitted"]),
             f'{num(data["added"]["p50"])} / {num(data["added"]["p99"])} / {num(data["added"]["p99.9"])}',
             f'{data["lost"]}/{data["failed"]}', f'{refused["n"]} ({refused["clean"]} clean)',
             f'{num(refused["p50"])} / {num(refused["p99"])} / {num(refused["max"])}',
             *(f'{num(probes[p]["p50"])} / {num(probes[p]["p99"])} / {num(probes[p]["max"])}' for p in probes),
             f'{probes["readyz"]["not_200"]}/{probes["readyz"]["n"]}', num(data["relay_pct_core"], 0)]]
    return Table(f"Overload: a relay with `max_active_streams = {data['capacity']}` offered {data['offered']} "
                 f"clients for {data['seconds']:g} s, each holding a paced stream or retrying after a 503 "
                 "(Retry-After, jittered); added = admitted streams − direct streams in the same window; "
                 "/healthz and /readyz asked every 50 ms",
                 ["combo", "capacity", "clients", "streams admitted", "added p50/p99/p99.9 ms", "lost/failed",
                  "refused", "refusal p50/p99/max ms", "/healthz p50/p99/max ms", "/readyz p50/p99/max ms",
                  "/readyz 503s", "relay CPU %"], rows)


def goals(report: dict) -> Table:
    verdict = {True: "met", False: "MISSED", None: "n/a"}
    rows = [[g["goal"], g["target"], g["measured"],
             verdict[g["met"]] + (f" ({', '.join(g['missed'])})" if g["missed"] else "")]
            for g in report.get("goals", [])]
    return Table("Goals (issues 4 and 11; the front door: issue 10; the Redis engine and workers: issue 9; "
                 "the conversation store: issue 12)",
                 ["goal", "target", "measured", "verdict"], rows)


def all_tables(report: dict) -> list[Table]:
    tables = [paced(report), engines(report), front_door(report), ttft(report), burst(report), stop(report),
              store(report), overload(report), workers(report), goals(report)]
    return [t for t in tables if t.rows]
