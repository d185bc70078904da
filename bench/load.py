"""Load held: N concurrent streams with faults, cancels and drops; no token lost, memory flat afterwards.

    python -m bench.load [--streams 1000] [--seconds 60] [--interval-ms 100] [--seed 1]

Starts the mock providers and the relay as processes (bench/procs.py), then keeps
`--streams` streams live for `--seconds`: each worker starts a stream, follows it to its
end, and starts the next, over a mix of the four combinations and the three upstreams.
A stream is a few seconds of tokens `--interval-ms` apart and does one of:

    complete   read to the end                        done/stop, text == the mock's answer
    error      #mock fault=error_after:3               error (rejected/unavailable), the 3 tokens
    drop       #mock fault=drop_after:3                error upstream_protocol, the 3 tokens
    stall      #mock fault=stall_after:3               error upstream_timeout, the 3 tokens
    cancel     WS cancel / POST cancel after K deltas  done/cancelled, a prefix of the answer
    resume     disconnect after K deltas, resume       done/stop, the whole answer, seq exact
               within the grace period on either transport
    vanish     disconnect after K deltas for good      the replay shows done/cancelled after the
               (a longer answer, outlasting the grace)  grace period, text a prefix

Every SSE byte is parsed strictly (`id:`/`event:`/`data:` frames or `: ping`); seq must be
contiguous and each stream must end with exactly one terminal event. A resume refused as
`stream_not_found` is a violation unless the stream could rightly have expired first (the
client, delayed by a saturated box, came back after the replay TTL); those are counted
apart. Memory is flat when the second half of the run needs no more than the first and RSS
does not grow in the 10 s after (CPython keeps freed arenas, so it need not fall back);
every stream, provider connection and `matrix_streams_active` must be gone once the replay
TTL has passed. Also measured: the relay's CPU (schedstat), /healthz round trips during the
run, the accept queues of the relay's and the mock's listening sockets and the kernel's
listen-overflow count. Prints one JSON summary on stdout (progress on stderr) and exits 1
on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from mock_ai.script import Script

from .procs import Proc, start_mock, start_relay
from .sysstat import box_jiffies, busy_pct, cpu_ns, rss_kib

UPSTREAMS = {"openai": "sse", "baidu": "sse", "spark": "ws"}
KINDS = {"complete": 50, "error": 7, "drop": 7, "stall": 6, "cancel": 10, "resume": 12, "vanish": 8}
FAULTS = {"error": "error_after:3", "drop": "drop_after:3", "stall": "stall_after:3"}
FAULT_CODES = {"error": {"upstream_rejected", "upstream_unavailable"}, "drop": {"upstream_protocol"},
               "stall": {"upstream_timeout"}}
GRACE_S = 5.0  # the relay's default disconnect_grace_s
# The relay under load: per-client limits lifted (every stream comes from one address), a
# short idle timeout so stalled streams end within a stream's time, and a replay TTL long
# enough for a client delayed by a saturated box, short enough to check that every stream
# is forgotten soon after the run.
RELAY_ENV = {
    "MATRIX_LIMITS__MAX_STREAMS_PER_CLIENT": "1000000", "MATRIX_LIMITS__STARTS_PER_MINUTE": "1e9",
    "MATRIX_LIMITS__BURST": "1000000", "MATRIX_STREAM__DISCONNECT_GRACE_S": str(GRACE_S),
    "MATRIX_STREAM__UPSTREAM_IDLE_TIMEOUT_S": "3", "MATRIX_STREAM__REPLAY_TTL_S": "15",
}
REPLAY_TTL_S = float(RELAY_ENV["MATRIX_STREAM__REPLAY_TTL_S"])
RESUME_AFTER_S = 0.3  # a dropped client comes back this soon
PING = b": ping\n\n"


class Malformed(Exception):
    """The relay sent bytes that are not a well-formed SSE frame."""


@dataclass
class Spec:
    n: int
    kind: str
    down: str
    upstream: str
    tokens: int
    interval_ms: int
    act_after: int  # deltas before a cancel / disconnect
    resume_down: str

    def __post_init__(self) -> None:
        self.sid = f"L{self.n}-{uuid.uuid4().hex[:10]}"
        fault = f" fault={FAULTS[self.kind]}" if self.kind in FAULTS else ""
        self.prompt = f"load {self.sid}\n#mock tokens={self.tokens} interval_ms={self.interval_ms}{fault}"
        self.answer = Script.parse(self.prompt).answer_tokens()

    @property
    def combo(self) -> str:
        return f"{self.down}-{UPSTREAMS[self.upstream]}"


@dataclass
class Result:
    spec: Spec
    events: list[dict] = field(default_factory=list)
    refused: str | None = None
    problems: list[str] = field(default_factory=list)
    legs: int = 0
    started_at: float = field(default_factory=time.monotonic)
    dropped_at: float | None = None  # when the client disconnected
    back_after: float | None = None  # seconds from the disconnect to the resumed leg's first answer
    refused_at: float | None = None

    def refuse(self, why: str) -> None:
        self.refused, self.refused_at = why, time.monotonic()
        if self.dropped_at is not None and self.back_after is None:
            self.back_after = self.refused_at - self.dropped_at

    @property
    def expired(self) -> bool:
        """Refused as unknown when the stream may rightly have expired. It ends no sooner than the grace
        period after the drop or its last token (the mock cannot send faster), and stays for the TTL:
        a refusal before that is the relay's fault; after, a saturated box delayed the client."""
        if not (self.refused or "").endswith("stream_not_found") or self.dropped_at is None:
            return False
        spec = self.spec
        ends_no_sooner = min(self.dropped_at + GRACE_S, self.started_at + (spec.tokens - 1) * spec.interval_ms / 1000)
        return self.refused_at >= ends_no_sooner + REPLAY_TTL_S

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1]["type"] in ("done", "error")

    @property
    def last_seq(self) -> int:
        return self.events[-1]["seq"] if self.events else -1

    @property
    def end(self) -> str:
        if self.refused:
            return f"refused {self.refused}"
        if not self.ended:
            return "unended"
        last = self.events[-1]
        return f"{last['type']} {last.get('reason') or last.get('code')}"


def verify(result: Result) -> list[str]:
    """Every way this stream breaks the relay's promises (empty when it kept them)."""
    spec, events = result.spec, result.events
    problems = list(result.problems)
    if result.expired:
        return problems  # counted apart: `expired_before_the_client_came_back`
    if result.refused:
        came = f" {result.back_after:.2f}s after the drop" if result.back_after is not None else ""
        return problems + [f"refused: {result.refused}{came}"]
    if [e["seq"] for e in events] != list(range(len(events))):
        problems.append("seq not contiguous from 0 (lost or duplicated event)")
    if not events or events[0]["type"] != "start" or events[0].get("combo") != spec.combo:
        problems.append("no start event for the right combination")
    if any(e.get("stream_id") != spec.sid for e in events):
        problems.append("an event of another stream")
    terminals = [i for i, e in enumerate(events) if e["type"] in ("done", "error")]
    if terminals != [len(events) - 1]:
        problems.append(f"{len(terminals)} terminal events, or one not last")
    text = "".join(e.get("text", "") for e in events if e["type"] == "delta")
    full = "".join(spec.answer)
    end = result.end
    if spec.kind == "resume" and result.back_after is not None and result.back_after >= GRACE_S:
        # the client came back after the grace period (a saturated box): either outcome is right
        expect_ok = (end == "done cancelled" and full.startswith(text)) or (end == "done stop" and text == full)
    elif spec.kind in ("complete", "resume"):
        expect_ok = end == "done stop" and text == full
    elif spec.kind in FAULTS:
        code = end.split(" ", 1)[1] if end.startswith("error ") else ""
        expect_ok = code in FAULT_CODES[spec.kind] and text == "".join(spec.answer[:3])
    else:  # cancel, vanish: stopped part way, or the answer finished first
        expect_ok = (end == "done cancelled" and full.startswith(text)) or (end == "done stop" and text == full)
    if not expect_ok:
        came = f", back after {result.back_after:.2f}s" if result.back_after is not None else ""
        problems.append(f"{spec.kind}: ended '{end}', text {len(text)}/{len(full)} chars"
                        f"{'' if full.startswith(text) else ' NOT a prefix of the answer'}{came}")
    return problems


# -- clients ------------------------------------------------------------------------------------

async def sse_events(response: aiohttp.ClientResponse):
    """Strictly parsed SSE events: every frame `id: N`, `event: T`, `data: {json}` or `: ping`."""
    block: list[bytes] = []
    async for line in response.content:
        if not line.endswith(b"\n") or b"\r" in line:
            raise Malformed(f"line {line[:80]!r}")
        line = line[:-1]
        if line:
            block.append(line)
            continue
        if block == [b": ping"]:
            block = []
            continue
        if (len(block) != 3 or not block[0].startswith(b"id: ") or not block[1].startswith(b"event: ")
                or not block[2].startswith(b"data: ")):
            raise Malformed(f"frame {block!r:.200}")
        event = json.loads(block[2][6:])
        if not isinstance(event, dict) or event.get("type") != block[1][7:].decode() or \
                str(event.get("seq")) != block[0][4:].decode():
            raise Malformed(f"frame {block!r:.200}")
        block = []
        yield event
    if block:
        raise Malformed(f"body ended inside a frame {block!r:.200}")


class Load:
    def __init__(self, relay: Proc, session: aiohttp.ClientSession, args: argparse.Namespace) -> None:
        self.relay = relay
        self.base = relay.base
        self.session = session
        self.args = args
        self.results: list[Result] = []
        self.checks: set[asyncio.Task] = set()
        self.started = 0
        self.live = 0
        self.exceptions: collections.Counter[str] = collections.Counter()

    def spec(self, rng: random.Random) -> Spec:
        self.started += 1
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        tokens = rng.randint(*self.args.tokens)
        if kind == "vanish":  # long enough that the grace period, not the answer, ends most of them
            tokens += round(GRACE_S * 1000 / self.args.interval_ms)
        return Spec(self.started, kind, rng.choice(("sse", "ws")), rng.choice(list(UPSTREAMS)),
                    tokens, self.args.interval_ms, rng.randint(1, 8), rng.choice(("sse", "ws")))

    def record(self, result: Result) -> None:
        result.problems = verify(result)
        self.results.append(result)

    async def worker(self, index: int, deadline: float) -> None:
        rng = random.Random(self.args.seed * 1_000_003 + index)
        await asyncio.sleep(self.args.ramp * index / self.args.streams)  # no thundering herd at t=0
        while time.monotonic() < deadline:
            spec = self.spec(rng)
            self.live += 1
            try:
                result = await self.stream(spec)
            finally:
                self.live -= 1
            if spec.kind == "vanish" and not result.ended and not result.refused:
                task = asyncio.get_running_loop().create_task(self.after_vanish(result))
                self.checks.add(task)
                task.add_done_callback(self.checks.discard)
            else:
                self.record(result)

    async def stream(self, spec: Spec) -> Result:
        result = Result(spec)
        budget = spec.tokens * spec.interval_ms / 1000 + 60
        try:
            async with asyncio.timeout(budget):
                body = {"messages": [{"role": "user", "content": spec.prompt}], "upstream": spec.upstream,
                        "stream_id": spec.sid}
                acting = spec.kind in ("cancel", "vanish", "resume")
                await self.leg(result, spec.down, body=body, act=acting)
                if spec.kind == "resume" and not result.ended and not result.refused:
                    await asyncio.sleep(RESUME_AFTER_S)  # back well within the grace period
                    await self.leg(result, spec.resume_down, after=result.last_seq)
        except TimeoutError:
            result.problems.append(f"no terminal event within {budget:.0f}s")
        except Malformed as exc:
            result.problems.append(f"malformed SSE: {exc}")
        except (aiohttp.ClientError, ConnectionError, json.JSONDecodeError) as exc:
            self.exceptions[type(exc).__name__] += 1
            result.problems.append(f"client error {type(exc).__name__}: {exc}")
        return result

    async def after_vanish(self, result: Result) -> None:
        """A vanished client's stream must end by itself after the grace period: read its tail from the replay."""
        spec = result.spec
        left = (spec.tokens - spec.act_after) * spec.interval_ms / 1000  # the provider goes on during the grace
        await asyncio.sleep(min(GRACE_S, left) + 1.5)  # it has ended by now; its log lives on for the TTL
        try:
            async with asyncio.timeout(30):
                await self.leg(result, "sse", after=result.last_seq)
        except Exception as exc:  # noqa: BLE001 - every failure here is a finding, recorded
            result.problems.append(f"replay after vanish failed: {type(exc).__name__}: {exc}")
        self.record(result)

    async def leg(self, result: Result, down: str, *, body: dict | None = None, after: int | None = None,
                  act: bool = False) -> None:
        """One connection: start (body) or resume (after) a stream and read it; `act` cancels or
        disconnects after the spec's number of deltas."""
        result.legs += 1
        if down == "sse":
            await self._sse_leg(result, body, after, act)
        else:
            await self._ws_leg(result, body, after, act)

    def _take(self, result: Result, event: dict, deltas: int, act: bool) -> tuple[int, bool]:
        """Keep an event; return (deltas so far, whether to act now)."""
        if result.dropped_at is not None and result.back_after is None:
            result.back_after = time.monotonic() - result.dropped_at
        result.events.append(event)
        if event["type"] == "delta":
            deltas += 1
            return deltas, act and deltas == result.spec.act_after
        return deltas, False

    async def _sse_leg(self, result: Result, body: dict | None, after: int | None, act: bool) -> None:
        spec = result.spec
        if body is not None:
            request = self.session.post(f"{self.base}/v1/chat/sse", json=body)
        else:
            request = self.session.get(f"{self.base}/v1/streams/{spec.sid}/events",
                                       headers={"Last-Event-ID": str(after)})
        async with request as response:
            if response.status != 200:
                result.refuse(f"HTTP {response.status} {(await response.json()).get('error', {}).get('code')}")
                return
            deltas = 0
            async for event in sse_events(response):
                deltas, now = self._take(result, event, deltas, act)
                if result.ended:
                    if (rest := (await response.content.read()).replace(PING, b"")):
                        result.problems.append(f"bytes after the terminal event: {rest[:80]!r}")
                    return
                if now and spec.kind == "cancel":
                    async with self.session.post(f"{self.base}/v1/streams/{spec.sid}/cancel") as cancel:
                        if cancel.status != 200:
                            result.problems.append(f"POST cancel answered {cancel.status}")
                elif now:
                    result.dropped_at = time.monotonic()
                    response.close()  # the client vanishes: drop the connection
                    return
            result.problems.append("SSE body ended before a terminal event")

    async def _ws_leg(self, result: Result, body: dict | None, after: int | None, act: bool) -> None:
        spec = result.spec
        async with self.session.ws_connect(f"{self.base.replace('http', 'ws', 1)}/v1/chat/ws",
                                           max_msg_size=0, autoping=True) as ws:
            if body is not None:
                await ws.send_str(json.dumps({"type": "chat", **body}))
            else:
                await ws.send_str(json.dumps({"type": "resume", "stream_id": spec.sid, "after": after}))
            deltas = 0
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    result.problems.append(f"WS message of type {message.type.name}")
                    return
                event = json.loads(message.data)
                if "seq" not in event:  # a refusal, which belongs to no stream
                    result.refuse(f"WS error {event.get('code')}")
                    return
                deltas, now = self._take(result, event, deltas, act)
                if result.ended:
                    return
                if now and spec.kind == "cancel":
                    await ws.send_str(json.dumps({"type": "cancel", "stream_id": spec.sid}))
                elif now:
                    result.dropped_at = time.monotonic()
                    await ws.close()  # the client is gone
                    return
            result.problems.append(f"WS closed ({ws.close_code}) before a terminal event")


# -- measuring ----------------------------------------------------------------------------------

def _kind_of(problem: str) -> str:
    """A problem without its numbers: what to count it under."""
    head = problem.split(", text")[0] if ", text" in problem else problem.split(":")[0]
    return re.sub(r"\d+(\.\d+)?", "N", head) + (" (text NOT a prefix)" if "NOT a prefix" in problem else "")


async def _get(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as response:
        return await response.text()


def _metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


async def _sample(pid: int, samples: list[tuple[float, int]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append((time.monotonic(), rss_kib(pid)))
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def _probe(session: aiohttp.ClientSession, base: str, rtts: list[float], stop: asyncio.Event) -> None:
    """GET /healthz every 0.5 s: the round trip shows how late the relay's event loop runs."""
    while not stop.is_set():
        sent = time.monotonic()
        try:
            await _get(session, f"{base}/healthz")
            rtts.append(time.monotonic() - sent)
        except (aiohttp.ClientError, TimeoutError):
            rtts.append(float("inf"))
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


def _quantiles(values: list[float]) -> dict:
    ordered = sorted(values)

    def ms(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1) if ordered else None
    return {"p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "max_ms": ms(1.0)}


def _accept_queues(ports: dict[str, int]) -> dict[str, int]:
    """Connections waiting in each listening socket's accept queue (/proc/net/tcp, state 0A)."""
    wanted = {f"0100007F:{port:04X}": name for name, port in ports.items()}
    out = {}
    with open("/proc/net/tcp") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 4 and parts[3] == "0A" and parts[1] in wanted:
                out[wanted[parts[1]]] = int(parts[4].split(":")[1], 16)
    return out


def _listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full (TcpExt ListenOverflows)."""
    with open("/proc/net/netstat") as f:
        rows = [line.split() for line in f if line.startswith("TcpExt:")]
    return int(dict(zip(rows[0], rows[1]))["ListenOverflows"])


async def _watch_queues(ports: dict[str, int], peaks: dict[str, int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for name, waiting in _accept_queues(ports).items():
            peaks[name] = max(peaks.get(name, 0), waiting)
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass


async def _progress(load: Load, relay: Proc, start: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 5)
        except TimeoutError:
            pass
        bad = sum(bool(r.problems) for r in load.results)
        print(f"[{time.monotonic() - start:5.1f}s] live {load.live:4d}  started {load.started:6d}  "
              f"verified {len(load.results):6d}  violations {bad}  relay RSS {rss_kib(relay.pid) // 1024} MiB",
              file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> dict:
    os.environ.update(RELAY_ENV)  # read by the relay process only (MATRIX_ settings override its file)
    with tempfile.TemporaryDirectory(prefix="matrix-load-") as tmp:
        workdir = Path(tmp)
        mock = await start_mock(workdir)
        relay = await start_relay(workdir, mock)
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                return await _measure(args, mock, relay, session)
        finally:
            relay.stop()
            mock.stop()
            if args.keep_logs:
                for proc in (relay, mock):
                    (Path(args.keep_logs) / proc.log.name).write_bytes(proc.log.read_bytes())


async def _measure(args: argparse.Namespace, mock: Proc, relay: Proc, session: aiohttp.ClientSession) -> dict:
    load = Load(relay, session, args)
    warm = Load(relay, session, args)  # imports, pools and caches warmed before the baseline
    await asyncio.gather(*(warm.stream(Spec(-i, "complete", down, up, 10, 10, 1, "sse"))
                           for i, (down, up) in enumerate([(d, u) for d in ("sse", "ws") for u in UPSTREAMS] * 4)))
    await asyncio.sleep(REPLAY_TTL_S + 1)  # the warm-up's replay logs expire
    rss_before = rss_kib(relay.pid)
    samples: list[tuple[float, int]] = []
    stop = asyncio.Event()
    sampler = asyncio.get_running_loop().create_task(_sample(relay.pid, samples, stop))
    start = time.monotonic()
    progress = asyncio.get_running_loop().create_task(_progress(load, relay, start, stop))
    rtts: list[float] = []
    probe = asyncio.get_running_loop().create_task(_probe(session, relay.base, rtts, stop))
    queue_peaks: dict[str, int] = {}
    ports = {proc.name: int(proc.base.rsplit(":", 1)[1]) for proc in (relay, mock)}
    queues = asyncio.get_running_loop().create_task(_watch_queues(ports, queue_peaks, stop))
    overflows0 = _listen_overflows()
    cpu0, mock_cpu0, own_cpu0, box0 = cpu_ns(relay.pid), cpu_ns(mock.pid), cpu_ns(os.getpid()), box_jiffies()
    await asyncio.gather(*(load.worker(i, start + args.seconds) for i in range(args.streams)))
    if load.checks:
        await asyncio.wait(set(load.checks), timeout=60)
    wall = time.monotonic() - start
    cpu1, mock_cpu1, own_cpu1, box1 = cpu_ns(relay.pid), cpu_ns(mock.pid), cpu_ns(os.getpid()), box_jiffies()
    stop.set()
    overflows = _listen_overflows() - overflows0
    await asyncio.gather(sampler, progress, probe, queues)

    after: list[int] = []  # settle: RSS each second for 10 s
    for _ in range(10):
        await asyncio.sleep(1)
        after.append(rss_kib(relay.pid))
    await asyncio.sleep(max(0.0, REPLAY_TTL_S + 2 - len(after)))  # every finished stream's log has expired
    metrics = await _get(session, f"{relay.base}/metrics")
    health = json.loads(await _get(session, f"{relay.base}/healthz"))
    mock_open = json.loads(await _get(session, f"{mock.base}/_mock/stats"))["open"]
    log = relay.log.read_text(errors="replace")

    results = load.results
    problems = collections.Counter(_kind_of(p) for r in results for p in r.problems)
    examples, seen = [], set()
    for r in sorted((r for r in results if r.problems), key=lambda r: problems[_kind_of(r.problems[0])]):
        if _kind_of(r.problems[0]) not in seen:  # one example of each kind of problem, rarest first
            seen.add(_kind_of(r.problems[0]))
            examples.append(f"{r.spec.sid} {r.spec.kind} {r.spec.combo}/{r.spec.upstream}: {'; '.join(r.problems)}")
    if args.dump:
        with open(args.dump, "w") as out:
            for r in results:
                if r.problems or r.refused:
                    out.write(json.dumps({"sid": r.spec.sid, "kind": r.spec.kind, "combo": r.spec.combo,
                                          "upstream": r.spec.upstream, "tokens": r.spec.tokens,
                                          "act_after": r.spec.act_after, "problems": r.problems,
                                          "refused": r.refused, "expired": r.expired, "legs": r.legs,
                                          "t_start": r.started_at - start,
                                          "t_drop": r.dropped_at and r.dropped_at - start,
                                          "t_refused": r.refused_at and r.refused_at - start,
                                          "back_after": r.back_after,
                                          "events": [(e["seq"], e["type"]) for e in r.events]}) + "\n")
    violations = sum(bool(r.problems) for r in results)
    ends = collections.Counter(r.end for r in results)
    peak = max([kib for _, kib in samples] + [rss_before])
    half = start + args.seconds / 2
    first_half = max([kib for t, kib in samples if t < half] or [rss_before])
    second_half = max([kib for t, kib in samples if half <= t <= start + args.seconds] or [rss_before])
    settled = after[-1]
    # Flat: under a steady load the second half of the run needs no more memory than the
    # first (a leak grows with the streams served), and once the load stops RSS does not
    # grow. CPython keeps freed arenas, so RSS need not fall back to the baseline.
    steady_growth = second_half - first_half
    flat = (steady_growth <= max(8 * 1024, (first_half - rss_before) // 10) and settled <= peak
            and settled <= after[0] + 1024)
    leftovers = {"streams_active_metric": _metric_sum(metrics, "matrix_streams_active"),
                 "relay_streams_held_after_ttl": health["streams"], "mock_connections_open": mock_open,
                 "relay_log_errors": log.count('"level":"error"'), "relay_internal_errors": log.count("internal error")}
    summary = {
        "streams_concurrent": args.streams, "seconds": args.seconds, "wall_s": round(wall, 1),
        "interval_ms": args.interval_ms, "tokens_per_stream": list(args.tokens), "seed": args.seed,
        "streams_verified": len(results), "streams_per_s": round(len(results) / wall, 1),
        "tokens_verified": sum(len([e for e in r.events if e["type"] == "delta"]) for r in results),
        "answer_tokens_checked": sum(len(r.spec.answer) for r in results if r.end == "done stop"),
        "by_kind": dict(collections.Counter(r.spec.kind for r in results)),
        "by_combo": dict(collections.Counter(f"{r.spec.combo}/{r.spec.upstream}" for r in results)),
        "ends": dict(ends.most_common()),
        "errors_by_code": dict(collections.Counter(r.end.split(" ", 1)[1] for r in results
                                                   if r.end.startswith(("error", "refused"))).most_common()),
        "resume_legs": sum(r.legs - 1 for r in results),  # resumes, and replays read after a vanish
        "violations": violations, "violation_kinds": dict(problems.most_common()), "violation_examples": examples,
        "client_exceptions": dict(load.exceptions),
        "relay_rss_kib": {"before": rss_before, "peak": peak, "peak_first_half": first_half,
                          "peak_second_half": second_half, "after_10s": settled, "after_series": after,
                          "flat_afterwards": flat},
        "relay_healthz_rtt": _quantiles(rtts),
        "accept_queue_peak": queue_peaks,  # aiohttp's TCPSite listens with backlog=128
        "listen_overflows": overflows,  # connections the kernel dropped, box-wide, during the run
        "resume_back_after": _quantiles([r.back_after for r in results
                                         if r.spec.kind == "resume" and r.back_after is not None]),
        "vanish_replay_after": _quantiles([r.back_after for r in results
                                           if r.spec.kind == "vanish" and r.back_after is not None]),
        "resumes_after_grace": sum(r.spec.kind == "resume" and (r.back_after or 0) >= GRACE_S for r in results),
        "expired_before_the_client_came_back": sum(r.expired for r in results),
        "relay_cpu_s": round((cpu1 - cpu0) / 1e9, 1), "relay_cpu_cores": round((cpu1 - cpu0) / 1e9 / wall, 2),
        "mock_cpu_cores": round((mock_cpu1 - mock_cpu0) / 1e9 / wall, 2),
        "load_client_cpu_cores": round((own_cpu1 - own_cpu0) / 1e9 / wall, 2),
        "box_busy_pct_of_one_core": round(busy_pct(box0, box1), 0), "cpu_count": os.cpu_count(),
        "leftovers": leftovers,
    }
    summary["ok"] = (violations == 0 and len(results) > 0 and flat and not any(leftovers.values()))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams (default 1000)")
    parser.add_argument("--seconds", type=float, default=60, help="how long new streams start (default 60)")
    parser.add_argument("--interval-ms", type=int, default=100, help="between a stream's tokens (default 100)")
    parser.add_argument("--tokens", type=lambda s: tuple(map(int, s.split("-"))), default=(20, 50),
                        help="tokens per stream, a range (default 20-50: 2-5 s at 100 ms)")
    parser.add_argument("--ramp", type=float, default=3.0, help="seconds over which workers start (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-logs", default=None, help="copy the relay's and mock's logs to this directory")
    parser.add_argument("--dump", default=None, help="write every stream with a problem, as JSON lines, to this file")
    args = parser.parse_args(argv)
    try:
        import uvloop  # the load client should cost less CPU than the relay it measures
        summary = uvloop.run(run(args))
    except ImportError:
        summary = asyncio.run(run(args))
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
