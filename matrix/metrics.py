"""Prometheus metrics: counted per stream and observed once when it ends, never per token."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .events import Done, Error
from .identity import authenticated
from .stream import Stream

if TYPE_CHECKING:
    from .delivery import Watchdog
    from .overload import Shedder

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """One registry per relay, so several relays (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.active = Gauge("matrix_streams_active", "Streams whose provider connection is live",
                            ["combo", "upstream"], registry=r)
        self.ended = Counter("matrix_streams_ended_total", "Streams ended, by terminal event and reason "
                             "(done: stop/length/cancelled/...; error: its code)",
                             ["combo", "upstream", "end", "reason"], registry=r)
        self.ttft = Histogram("matrix_time_to_first_token_seconds", "From stream start to the provider's first text",
                              ["combo", "upstream"], buckets=_LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("matrix_stream_duration_seconds", "From stream start to its terminal event",
                                  ["combo", "upstream"], buckets=_DURATION_BUCKETS, registry=r)
        self.tokens = Counter("matrix_tokens_relayed_total", "Text pieces received from providers and relayed",
                              ["combo", "upstream"], registry=r)
        self.upstream_errors = Counter("matrix_upstream_errors_total", "Provider failures, by vendor code",
                                       ["upstream", "code", "upstream_code"], registry=r)
        self.retries = Counter("matrix_upstream_retries_total", "Provider attempts retried before the first token",
                               ["upstream"], registry=r)
        self.resumes = Counter("matrix_resumes_total", "Streams resumed after a seq", ["transport"], registry=r)
        self.heartbeats = Counter("matrix_heartbeats_sent_total", "Keep-alives sent to idle SSE clients",
                                  registry=r)
        self.client_writes = Counter("matrix_client_writes_total", "Writes to clients: `direct` in the provider "
                                     "data's own loop pass, `awaited` by the reader's task (transport busy, "
                                     "catching up, heartbeats)", ["path"], registry=r)
        self.slow_clients = Counter("matrix_slow_client_disconnects_total",
                                    "Clients dropped for taking nothing for send_timeout_s", ["transport"], registry=r)
        self.client_streams = Counter("matrix_client_streams_started_total",
                                      "Streams started, by client name or key fingerprint (anonymous without keys)",
                                      ["client"], registry=r)
        self.answers_saved = Counter("matrix_conversation_answers_total", "Answers of conversation streams, by "
                                     "what their save did: saved, duplicate (saved before, or the conversation "
                                     "was deleted) or failed (the store did not answer)", ["result"], registry=r)
        self.refusals = Counter("matrix_requests_refused_total", "Requests refused before a stream, by code",
                                ["code"], registry=r)

    def watch_load(self, shedder: Shedder) -> None:
        """Gauges read when scraped: nothing is done per tick or per stream for them."""
        Gauge("matrix_event_loop_lag_seconds", "How late the event loop ran its latest 20 ms tick",
              registry=self.registry).set_function(lambda: shedder.lag_s)
        Gauge("matrix_overloaded", "1 while new streams are refused with 503 overloaded",
              registry=self.registry).set_function(lambda: float(shedder.reason() is not None))

    def connection_closed(self, watchdog: Watchdog, transport: str) -> None:
        """A client connection's counts, added once when it closes."""
        self.heartbeats.inc(watchdog.pings)
        self.client_writes.labels("direct").inc(watchdog.direct)
        self.client_writes.labels("awaited").inc(watchdog.writes - watchdog.direct - watchdog.pings)
        if watchdog.gave_up:
            self.slow_clients.labels(transport).inc()

    def stream_started(self, stream: Stream) -> None:
        self.active.labels(stream.combo, stream.upstream).inc()
        # Peer addresses are unbounded: as a label they would grow the registry forever.
        self.client_streams.labels(stream.owner if authenticated(stream.owner) else "anonymous").inc()

    def stream_ended(self, stream: Stream, now: float) -> None:
        labels = (stream.combo, stream.upstream)
        self.active.labels(*labels).dec()
        end = stream.terminal
        if isinstance(end, Done):
            self.ended.labels(*labels, "done", end.reason).inc()
        elif isinstance(end, Error):
            self.ended.labels(*labels, "error", end.code).inc()
            if end.code.startswith("upstream_"):
                self.upstream_errors.labels(stream.upstream, end.code, end.upstream_code or "").inc()
        if stream.first_text_at is not None:
            self.ttft.labels(*labels).observe(stream.first_text_at - stream.started_at)
        self.duration.labels(*labels).observe(now - stream.started_at)
        if stream.pieces:
            self.tokens.labels(*labels).inc(stream.pieces)

    def render(self) -> bytes:
        return generate_latest(self.registry)
