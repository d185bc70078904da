"""What a run measures: the presets (tiny, quick, full) and the options that narrow them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from matrix.config import COMBOS as RELAY_COMBOS

PHASES = ("paced", "ttft", "burst", "stop", "store", "overload", "workers")
# downstream-upstream. The relay's four, and its OpenAI-compatible front door
# (`POST /v1/chat/completions`, chunks as SSE) over an SSE upstream.
FRONT_DOOR = "openai-sse"
FRONT_DOOR_BASE = "sse-sse"   # what the front door's CPU per token is held against (goals.py)
COMBOS = (*RELAY_COMBOS, FRONT_DOOR)
# A combination with `@redis` runs on a second relay, `[engine] kind = "redis"`, beside a
# redis-server the bench starts; without a suffix it runs on the memory engine (the default).
ENGINES = ("memory", "redis")
REDIS_COMBOS = tuple(f"{c}@redis" for c in RELAY_COMBOS)
KNOWN_COMBOS = (*COMBOS, *REDIS_COMBOS, f"{FRONT_DOOR}@redis")
# The store phase's combinations: one per downstream door that takes a `conversation_id`.
STORE_COMBOS = ("sse-sse", "ws-ws")


def engine_of(combo: str) -> str:
    """`sse-ws@redis` -> redis; `sse-ws` -> memory."""
    return combo.partition("@")[2] or "memory"


def base_of(combo: str) -> str:
    """The combination without its engine: `sse-ws@redis` -> sse-ws."""
    return combo.partition("@")[0]


def down_of(combo: str) -> str:
    return base_of(combo).split("-")[0]


def up_of(combo: str) -> str:
    """The upstream transport: `ws-sse@redis` -> sse."""
    return base_of(combo).split("-")[1]


def with_engines(combos: tuple[str, ...], engines: tuple[str, ...]) -> tuple[str, ...]:
    """`--engines`: the combinations on each engine; the front door joins Redis only when named as such."""
    bases = tuple(dict.fromkeys(base_of(c) for c in combos))
    out = [c for c in bases if "memory" in engines]
    out += [f"{c}@redis" for c in bases if "redis" in engines and c in RELAY_COMBOS]
    return tuple(out)


@dataclass(frozen=True)
class Plan:
    mode: str = "full"
    combos: tuple[str, ...] = COMBOS
    levels: tuple[int, ...] = (1, 50, 200, 500)   # relayed streams at once, each at 1000/interval_ms tok/s
    reps: int = 5                 # paced repetitions, shuffled order, after a warm-up per window
    tokens: int = 200             # per paced stream (4 s at 50 tok/s)
    interval_ms: float = 20.0     # 50 tokens/s
    probes: int = 8               # direct (and nginx) reference streams in every paced window
    hold_s: float = 0.6           # all streams open and idle before the first token (idle RSS)
    fresh_relay: bool = True      # restart the relay before each paced window
    retries: int = 10             # paced windows re-run, per run, when processes outside the bench disturbed them
    ttft_requests: int = 40       # sequential requests per route
    burst_tokens: int = 2000
    burst_reps: int = 5
    stop_streams: int = 30        # per combination
    store_conversations: int = 10  # the store phase: conversations per relay and combination, continued in turns
    store_turns: int = 30         # history reaches `[store] history_messages` (20) at turn 11: most turns read it all
    overload_capacity: int = 100  # the overload phase's max_active_streams: the knee of this 2-core box (README)
    overload_combo: str = "sse-sse"
    overload_seconds: float = 8.0  # of offered load: 2 × capacity clients, each holding a stream or retrying
    workers: tuple[int, ...] = (1, 2)   # `matrix serve --workers N` compared at saturation
    workers_combo: str = "sse-sse"
    workers_source: str = "firehose"    # bench/firehose.py (cheap per token), or "mock" (costs what the relay does)
    workers_streams: int = 48     # concurrent unpaced streams: every worker stays busy between streams
    workers_tokens: int = 2000    # per stream, sent as fast as the source can: per-stream costs stay small
    workers_seconds: float = 4.0  # counted, after the streams have ramped up
    workers_reps: int = 3         # N = 1 and 2 in shuffled order per repetition
    sse_upstream: str = "openai"
    ws_upstream: str = "spark"
    phases: tuple[str, ...] = PHASES
    nginx: bool = True
    relay_uvloop: bool = False
    harness_uvloop: bool = True
    budget_s: float = 0.0         # hard stop for the whole run; 0: twice estimate_s()

    def upstream(self, transport: str) -> str:
        return self.sse_upstream if transport == "sse" else self.ws_upstream

    @property
    def gate_level(self) -> int:
        """The level the latency goals are read at: 50 streams, else the nearest measured."""
        return min(self.levels, key=lambda n: (abs(n - 50), -n))

    @property
    def load_level(self) -> int:
        """The level the CPU and memory goals are read at: 200 streams, else the nearest measured."""
        return min(self.levels, key=lambda n: (abs(n - 200), -n))

    @property
    def engines(self) -> tuple[str, ...]:
        """The relays a run starts for the paced, TTFT, burst and stop phases: memory and/or redis."""
        if not set(self.phases) - {"workers", "store"}:  # each starts relays of its own
            return ()
        return tuple(e for e in ENGINES if any(engine_of(c) == e for c in self.combos))

    @property
    def store_combos(self) -> tuple[str, ...]:
        """What the store phase measures: those of STORE_COMBOS the run's combinations name, else sse-sse."""
        bases = {base_of(c) for c in self.combos}
        return tuple(c for c in STORE_COMBOS if c in bases) or STORE_COMBOS[:1]

    @property
    def needs_redis(self) -> bool:
        return "redis" in self.engines or "workers" in self.phases

    def estimate_s(self) -> float:
        """A generous guess of the run's length, for the hard stop of a narrowed or widened run."""
        windows = self.reps * len(self.combos) * len(self.levels) if "paced" in self.phases else 0
        per_window = 1.5 + self.hold_s + self.tokens * self.interval_ms / 1000 + max(self.levels) * 0.008
        workers = (len(self.workers) * self.workers_reps * (4 + self.workers_seconds)
                   if "workers" in self.phases else 0)
        workers += self.overload_seconds + self.tokens * self.interval_ms / 1000 + 10 if "overload" in self.phases else 0
        # Two stores, a plain and a conversation request per conversation, combination and turn, ~15 ms each.
        workers += (15 + 2 * 2 * len(self.store_combos) * self.store_conversations * self.store_turns * 0.015
                    if "store" in self.phases else 0)
        return (20 + (windows + self.retries) * per_window + self.ttft_requests * 0.1 + self.burst_reps * 2
                + len(self.combos) * 3 + workers)

    def replace(self, **changes) -> Plan:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


PRESETS = {
    "full": Plan(),
    "quick": Plan(mode="quick", levels=(1, 50, 200), reps=2, tokens=60, hold_s=0.5, retries=2, ttft_requests=15,
                  burst_reps=2, stop_streams=10, store_turns=12, overload_seconds=4.0, workers_seconds=3.0,
                  workers_reps=2),
    "tiny": Plan(mode="tiny", combos=(*COMBOS, *REDIS_COMBOS), levels=(2,), reps=1, tokens=8, interval_ms=10.0,
                 probes=2, hold_s=0.2, fresh_relay=False, retries=0, ttft_requests=2, burst_tokens=200, burst_reps=1,
                 stop_streams=2, store_conversations=2, store_turns=2, overload_capacity=3, overload_seconds=1.0,
                 workers_streams=4, workers_tokens=100, workers_seconds=1.0, workers_reps=1),
}
