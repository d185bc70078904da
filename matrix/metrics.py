"""Prometheus metrics: counted per stream and observed once when it ends, never per token."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .events import Done, Error
from .identity import authenticated
from .stream import Stream

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
        self.slow_clients = Counter("matrix_slow_client_disconnects_total",
                                    "Clients dropped for taking nothing for send_timeout_s", ["transport"], registry=r)
        self.client_streams = Counter("matrix_client_streams_started_total",
                                      "Streams started, by client name or key fingerprint (anonymous without keys)",
                                      ["client"], registry=r)
        self.refusals = Counter("matrix_requests_refused_total", "Requests refused before a stream, by code",
                                ["code"], registry=r)

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
