"""The conversation store's cost: time to first token and the terminal event's delay, with and without a conversation.

A relay per store, started here: `[store] url` an SQLite file in the bench's workdir, or a
PostgreSQL cluster the bench starts (bench/pgd.py; skipped, and said so, where Debian's
binaries are missing). Requests go one at a time, as ttft.py sends them, in shuffled order:
"plain" ones name no conversation; "conversation" ones continue one of
`store_conversations` conversations by one turn, so the relay saves the user message and
reads the history (growing up to `[store] history_messages`, 20 by default) before it calls
the provider, and saves the answer before it sends the terminal event. Added = the
conversation requests' percentile minus the plain ones', same relay, same window.

Measured per request, on the client's clock (the mock stamps each token as it sends it):
`ttft`, request sent → first token; `last_token`, the provider's last token sent → received;
`done_after_last_token`, the provider's last token sent → terminal event received (the save
of the answer sits in between); `done_after_last_delta`, last token received → terminal event.

Afterwards every conversation is read back (`GET /v1/conversations/{id}`): it must hold
2 × turns messages, every answer `stop`; and each answer's `usage.prompt_tokens` (the mock
counts one per character of every message it received) must equal the length of the
history the contract says was sent, which shows the provider really received it.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field

import aiohttp

from matrix.config import StoreConfig

from . import pgd, procs
from .clients import Tally, chat_body, prompt, relay_sse, relay_ws_chat
from .lab import Lab
from .meter import Meter
from .plan import down_of, up_of
from .quantiles import latency_ms
from .sysstat import children, noise_probe_ms

KINDS = ("plain", "conversation")
METRICS = ("ttft", "last_token", "done_after_last_token", "done_after_last_delta")
WARM_TURNS = 2          # on conversations of their own, not counted: pools, caches and first statements warm up
REQUEST_TIMEOUT_S = 30.0
HISTORY = StoreConfig.model_fields["history_messages"].default  # the relays run with the default


def _nothing() -> None:
    pass


Send = Callable[[dict, Tally], Awaitable[None]]


@dataclass
class _Route:
    """One combination through one store's relay: its conversations and what its requests measured."""

    store: str
    combo: str
    base: str
    send: Send
    ids: list[str]
    samples: dict[str, dict[str, list[int]]] = field(  # kind -> metric -> ns
        default_factory=lambda: {k: {m: [] for m in METRICS} for k in KINDS})
    errors: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    first_error: str | None = None


async def measure(lab: Lab, tick) -> dict:
    """Per store and combination: TTFT and last delta → terminal event, plain vs conversation, and the readback."""
    plan = lab.plan
    out: dict = {"combos": list(plan.store_combos), "conversations": plan.store_conversations,
                 "turns": plan.store_turns, "history_messages": HISTORY, "stores": {}}
    with ExitStack() as clusters:
        async with AsyncExitStack() as stack:
            relays = {"sqlite": await _relay(lab, stack, "sqlite", f"sqlite:///{lab.workdir / 'store.db'}")}
            cluster = _cluster(clusters, out)
            if cluster is not None:
                relays["postgresql"] = await _relay(lab, stack, "postgresql", await cluster.create_database())
            routes = [await _route(lab, stack, store, relay, combo)
                      for store, relay in relays.items() for combo in plan.store_combos]
            for turn in range(WARM_TURNS):
                await _round(lab, routes, turn, warm=True)
            pids = {"relays": [pid for relay in relays.values() for pid in relay.pids()], "mock": lab.mock.pids()}
            if cluster is not None:  # the postmaster, and the backends serving the relay's pool by now
                pids["postgresql"] = [cluster.proc.pid, *children(cluster.proc.pid)]
            probe = noise_probe_ms()
            meter = Meter(pids).start()
            for turn in range(plan.store_turns):
                await _round(lab, routes, turn)
                tick()
            meter.stop()
            for route in routes:
                cell = _cell(route)
                cell["readback"] = await _readback(lab, route)
                out["stores"].setdefault(route.store, {"url": _shown(route.store), "by_combo": {}})
                out["stores"][route.store]["by_combo"][route.combo] = cell
    out["noise"] = {"probe_ms": round(probe, 2), "box_busy_pct": round(meter.box_pct, 1),
                    "other_pct": round(meter.other_pct, 1), "seconds": round(meter.ns / 1e9, 1),
                    **{f"{role}_pct_core": round(meter.pct(role) or 0, 1) for role in pids}}
    return out


def _cluster(clusters: ExitStack, out: dict) -> pgd.PostgresServer | None:
    """A PostgreSQL cluster owned by `clusters`, or None with the reason in the report.

    Started synchronously on purpose: nothing is measured meanwhile, and a run cancelled
    during the start still stops it by PID (bench/pgd.py)."""
    why = pgd.missing()
    if why is None:
        try:
            # Durable, as PostgreSQL ships (fsync on): each commit waits for its WAL to reach the disk.
            return clusters.enter_context(pgd.postgres_server(durable=True))
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            why = f"the PostgreSQL cluster did not start: {exc}"[:500]
    out["stores"]["postgresql"] = {"skipped": why}
    return None


async def _relay(lab: Lab, stack: AsyncExitStack, store: str, url: str) -> procs.Proc:
    relay = await procs.start_relay(lab.workdir, lab.mock, uvloop=lab.plan.relay_uvloop, name=f"store-{store}-relay",
                                    store={"url": url})
    stack.callback(relay.stop)  # before the cluster stops: the relay closes its pool first
    return relay


async def _route(lab: Lab, stack: AsyncExitStack, store: str, relay: procs.Proc, combo: str) -> _Route:
    """A WebSocket door gets one open socket for all its requests, as an application keeps one (ttft.py)."""
    if down_of(combo) == "ws":
        ws = await stack.enter_async_context(lab.session.ws_connect(f"{relay.base}/v1/chat/ws", max_msg_size=0,
                                                                    compress=0))
        send: Send = lambda body, tally: relay_ws_chat(ws, body, tally, _nothing)  # noqa: E731
    else:
        send = lambda body, tally: relay_sse(lab.session, relay.base, body, tally, _nothing)  # noqa: E731
    tag = uuid.uuid4().hex[:8]
    ids = [f"bench-{combo}-{tag}-{i}" for i in range(lab.plan.store_conversations)]
    return _Route(store, combo, relay.base, send, ids)


async def _round(lab: Lab, routes: list[_Route], turn: int, warm: bool = False) -> None:
    """One turn of every conversation, and as many plain requests, on every route, in shuffled order."""
    plan = lab.plan
    work = [(route, kind, i) for route in routes for kind in KINDS for i in range(plan.store_conversations)]
    random.shuffle(work)
    for route, kind, i in work:
        body = chat_body(prompt(3, 1.0, tag=f"turn{turn}"), plan.upstream(up_of(route.combo)))
        if kind == "conversation":
            body["conversation_id"] = f"warm-{route.ids[i]}" if warm else route.ids[i]
        tally = Tally(3)
        try:
            await asyncio.wait_for(route.send(body, tally), REQUEST_TIMEOUT_S)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            tally.error = tally.error or f"{type(exc).__name__}: {exc}"[:200]
        if warm:
            continue
        if tally.error or not tally.first_ns or not tally.end_ns:
            route.errors[kind] += 1
            route.first_error = route.first_error or tally.error or "no token or no terminal event"
            continue
        last_sent = tally.last_ns - tally.lat_ns[-1]  # the mock's stamp on the last token
        for metric, ns in zip(METRICS, (tally.first_ns - tally.sent_ns, tally.lat_ns[-1], tally.end_ns - last_sent,
                                        tally.end_ns - tally.last_ns)):
            route.samples[kind][metric].append(ns)


def _cell(route: _Route) -> dict:
    cell: dict = {kind: {**{m: latency_ms(route.samples[kind][m]) for m in METRICS}, "errors": route.errors[kind]}
                  for kind in KINDS}
    cell["added"] = {f"{m}_{p}_ms": _minus(cell["conversation"][m].get(p), cell["plain"][m].get(p))
                     for m in METRICS for p in ("p50", "p99")}
    cell["first_error"] = route.first_error
    return cell


async def _readback(lab: Lab, route: _Route) -> dict:
    """Each conversation as stored: its message count, its answers' statuses, and the history the provider saw."""
    turns = lab.plan.store_turns
    complete = seen = checked = 0
    problem = None
    for cid in route.ids:
        async with lab.session.get(f"{route.base}/v1/conversations/{cid}") as response:
            if response.status != 200:
                problem = problem or f"GET {cid}: HTTP {response.status} {(await response.read())[:200]!r}"
                continue
            messages = (await response.json())["messages"]
        answers = messages[1::2]
        if (len(messages) == 2 * turns and all(m["role"] == "user" for m in messages[::2])
                and all(m["role"] == "assistant" and m.get("status") == "stop" for m in answers)):
            complete += 1
        elif problem is None:
            problem = f"{cid}: {len(messages)} messages, statuses {[m.get('status') for m in answers]}"
        for k, answer in enumerate(answers):
            checked += 1
            sent = messages[max(0, 2 * k - HISTORY):2 * k + 1]  # the stored history, then the new user message
            got = (answer.get("usage") or {}).get("prompt_tokens")
            seen += got == sum(len(m["text"]) for m in sent)
    return {"conversations": len(route.ids), "complete": complete, "answers": checked,
            "history_seen": seen, "first_problem": problem}


def _shown(store: str) -> str:
    """The URL's shape for the report: the workdir's path and the cluster's port mean nothing after the run."""
    return "sqlite:///<workdir>/store.db" if store == "sqlite" else "postgresql://postgres@127.0.0.1:<port>/<db>"


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)
