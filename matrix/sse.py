"""Server-Sent Events, sans I/O: frame events for clients, decode a provider's byte stream.

The decoder follows the WHATWG rules both official OpenAI and Anthropic SDKs implement:
lines end in LF, CRLF or CR; one optional space after the colon is stripped (Baidu's
agents write `data:{` with none); `:` lines are comments; `data` lines join with LF; a
blank line dispatches; one leading U+FEFF byte order mark is dropped. It buffers bytes and
decodes only complete lines, so a read that ends inside a UTF-8 character (or inside a
line) never corrupts text.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import UpstreamProtocolError
from .events import Event, encode

PING = b": ping\n\n"
BOM = "\ufeff".encode()
MAX_LINE = 4 * 2**20  # a provider line longer than this is broken, not a big token
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",  # tell nginx not to buffer this response
}


def frame(event: Event) -> bytes:
    """`id: <seq>`, `event: <type>`, `data: <json>`, blank line. JSON never holds a raw newline."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), encode(event))


def frames(events: list[Event]) -> bytes:
    return b"".join([frame(e) for e in events])


class ServerSentEvent(NamedTuple):
    event: str
    data: str
    id: str | None


class Decoder:
    """Feed bytes as they arrive; get back the events completed by them."""

    __slots__ = ("_buffer", "_data", "_event", "_id", "_pending_cr", "_started")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._pending_cr = False
        self._started = False  # False until the stream's first bytes are past any BOM

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if not chunk:
            return []  # an empty read must not forget a CR waiting for its LF
        if not self._started:
            # WHATWG HTML "Interpreting an event stream": one leading U+FEFF is ignored, so
            # `\ufeffdata:` is not a field named "\ufeffdata". Its 3 bytes may come split.
            chunk = self._buffer + chunk
            self._buffer = b""
            if len(chunk) < len(BOM) and BOM.startswith(chunk):
                self._buffer = chunk
                return []
            self._started = True
            chunk = chunk.removeprefix(BOM)
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across two reads
        self._pending_cr = False
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            self._pending_cr = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()
        if len(self._buffer) > MAX_LINE:
            raise UpstreamProtocolError(f"a provider SSE line exceeds {MAX_LINE} bytes without ending")
        out: list[ServerSentEvent] = []
        for line in lines:
            if not line:
                if self._data:
                    out.append(ServerSentEvent(self._event or "message", "\n".join(self._data), self._id))
                    self._data = []
                self._event = ""
                continue
            if line[0] == 0x3A:  # ":" comment / keep-alive
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value.decode("utf-8", "replace"))
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
            elif name == b"id" and b"\0" not in value:
                self._id = value.decode("utf-8", "replace")
        return out

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered (the body ended mid-event)."""
        return bool(self._buffer or self._data)
