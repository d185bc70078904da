"""One exception tree for the relay; every error carries the code a client will see.

    MatrixError                      code, message, status (HTTP hint), retryable
    ├── ConfigError                  bad configuration file or environment
    ├── RequestError                 a client's request is refused before any stream starts
    │   ├── StreamNotFound           unknown or expired stream id (404)
    │   └── ResumeGap                the replay buffer no longer covers the asked seq (410)
    ├── UpstreamError                the provider failed; reaches the client as an `error` event
    │   ├── UpstreamUnavailable      connect error, HTTP 429/5xx, retryable handshake failure
    │   ├── UpstreamRejected         the vendor refused the request (auth, audit, quota...)
    │   ├── UpstreamTimeout          no data for upstream_idle_timeout_s
    │   └── UpstreamProtocolError    malformed frame, or the stream ended without its end marker
    ├── EngineUnavailable            the shared engine (Redis) does not answer (503)
    ├── StoreUnavailable             the conversation store's database does not answer (503)
    ├── Overloaded                   this relay sheds load (503, Retry-After); try again, maybe elsewhere
    └── ShuttingDown                 the relay is draining; try again elsewhere

Foreign exceptions are translated once, at the transport boundary, with
``raise ... from exc``; nothing above the transports sees aiohttp or websockets errors.
"""

from __future__ import annotations


class MatrixError(Exception):
    code = "internal"
    status = 500
    retryable = False
    retry_after_s: int | None = None  # an HTTP refusal's Retry-After, when the relay knows one

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 retryable: bool | None = None, upstream_code: str | None = None, param: str | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if retryable is not None:
            self.retryable = retryable
        self.upstream_code = upstream_code
        self.param = param  # the request field at fault, when one is

    def body(self) -> dict:
        """The `{"error": {...}}` body of an HTTP refusal."""
        return error_body(self.status, self.code, self.message, self.param)


# OpenAI's error `type` by HTTP status: the official SDKs pick their exception class by
# status, and people read `type`; our `code` says exactly what happened.
_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict:
    """Every HTTP refusal's body: `code` and `message`, plus `type` and `param` as OpenAI shapes them."""
    kind = _TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"code": code, "message": message, "type": kind, "param": param}}


class ConfigError(MatrixError):
    code = "config"


class RequestError(MatrixError):
    code = "invalid_request"
    status = 400


class StreamNotFound(RequestError):
    code = "stream_not_found"
    status = 404


class ResumeGap(RequestError):
    code = "resume_gap"
    status = 410


class UpstreamError(MatrixError):
    code = "upstream_error"
    status = 502


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"
    retryable = True


class UpstreamRejected(UpstreamError):
    code = "upstream_rejected"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"
    retryable = True


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol"
    retryable = True


class EngineUnavailable(MatrixError):
    """The shared engine (Redis) does not answer: nothing can start or be found until it does."""

    code = "engine_unavailable"
    status = 503
    retryable = True


class StoreUnavailable(MatrixError):
    """The conversation store's database does not answer: conversations wait, plain streams go on."""

    code = "store_unavailable"
    status = 503
    retryable = True
    retry_after_s = 1  # the relay tries the database again at most once a second (matrix/conversations.py)


class RelayLost(MatrixError):
    """The relay that ran the stream's provider connection stopped renewing its lease (it died)."""

    code = "relay_lost"
    status = 502
    retryable = True


class Overloaded(MatrixError):
    """New streams are refused while this relay is over `[limits] max_active_streams` or `max_loop_lag_ms`."""

    code = "overloaded"
    status = 503
    retryable = True


class ShuttingDown(MatrixError):
    code = "shutting_down"
    status = 503
    retryable = True


def from_http_status(status: int, message: str, upstream_code: str | None = None) -> UpstreamError:
    """A provider's HTTP refusal: 408/429/5xx may pass if tried again, anything else will not."""
    cls = UpstreamUnavailable if status in (408, 429) or status >= 500 else UpstreamRejected
    return cls(f"HTTP {status}: {message}", upstream_code=upstream_code or str(status))
