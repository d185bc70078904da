"""The SSE framing written to clients and the decoder reading providers, including awkward splits."""

from hypothesis import given, strategies as st

from matrix.events import Delta, Done, Error, Start, decode
from matrix.sse import Decoder, ServerSentEvent, frame

STREAM = (b"event:message\ndata:{\"a\":\"\xe4\xbd\xa0\xe5\xa5\xbd\"}\n\n"
          b": keep-alive comment\n\n"
          b"event:ping\n\n"
          b"data: first line\r\ndata: second line\r\n\r\n"
          b"id: 7\rdata: cr only\r\r"
          b"data: [DONE]\n\n")
EXPECTED = [ServerSentEvent("message", '{"a":"你好"}', None),
            ServerSentEvent("message", "first line\nsecond line", None),
            ServerSentEvent("message", "cr only", "7"),
            ServerSentEvent("message", "[DONE]", "7")]


def test_frame_is_exactly_the_contract():
    """An event is framed as id, event, data lines and a blank line, with compact UTF-8 JSON."""
    assert frame(Delta("s1", 1, "你")) == (
        b'id: 1\nevent: delta\ndata: {"type":"delta","stream_id":"s1","seq":1,"text":"\xe4\xbd\xa0"}\n\n')


def test_frame_escapes_newlines_inside_data():
    """Text with CR/LF cannot break out of the data line: JSON escapes it."""
    raw = frame(Error("s1", 2, "upstream_rejected", "bad\r\n\nevent: fake", upstream_code="1\n2"))
    assert raw.count(b"\n") == 4 and b"\r" not in raw
    assert decode(raw.split(b"data: ")[1].strip()).message == "bad\r\n\nevent: fake"


def test_events_round_trip_through_json():
    """Every event type encodes and decodes to an equal object."""
    for event in (Start("s", 0, "spark", "ws-ws"), Delta("s", 1, "a"), Done("s", 2, "stop", {"prompt_tokens": 1}),
                  Error("s", 3, "upstream_timeout", "no data", True, None)):
        assert decode(frame(event).split(b"data: ")[1].strip()) == event


def test_decoder_whole_stream():
    """The decoder honours no-space data, comments, empty events, CRLF and CR line ends."""
    assert Decoder().feed(STREAM) == EXPECTED


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), unique=True, max_size=30))
def test_decoder_any_split_gives_same_events(cuts):
    """Splitting the byte stream anywhere (inside UTF-8 characters and CRLF too) yields the same events."""
    cuts = sorted(cuts)
    decoder, out, last = Decoder(), [], 0
    for cut in [*cuts, len(STREAM)]:
        out.extend(decoder.feed(STREAM[last:cut]))
        last = cut
    assert out == EXPECTED
    assert not decoder.pending


def test_decoder_reports_unfinished_event():
    """A body that ends mid-event leaves the decoder pending, so the transport can report truncation."""
    decoder = Decoder()
    decoder.feed(b"data: {\"partial\"")
    assert decoder.pending


def test_decoder_refuses_an_endless_line():
    """A provider line that never ends is a protocol error once it passes MAX_LINE, not unbounded memory."""
    import pytest

    from matrix.errors import UpstreamProtocolError
    from matrix.sse import MAX_LINE

    decoder = Decoder()
    decoder.feed(b"data: " + b"x" * (MAX_LINE // 2))
    with pytest.raises(UpstreamProtocolError):
        decoder.feed(b"x" * MAX_LINE)


BOM_STREAM = "\ufeffdata: first\n\nevent: x\ndata: 二\n\n".encode()
BOM_EXPECTED = [ServerSentEvent("message", "first", None), ServerSentEvent("x", "二", None)]


def feed_pieces(data: bytes, cuts: list[int]) -> tuple[list[ServerSentEvent], Decoder]:
    decoder, out, last = Decoder(), [], 0
    for cut in [*cuts, len(data)]:
        out.extend(decoder.feed(data[last:cut]))
        last = cut
    return out, decoder


def test_decoder_drops_one_leading_bom_split_at_every_offset():
    """One leading U+FEFF is ignored (WHATWG), however its 3 bytes and the rest are split across reads."""
    for cut in range(len(BOM_STREAM) + 1):
        out, decoder = feed_pieces(BOM_STREAM, [cut])
        assert out == BOM_EXPECTED and not decoder.pending, cut
    out, decoder = feed_pieces(BOM_STREAM, list(range(1, len(BOM_STREAM))))  # one byte per read
    assert out == BOM_EXPECTED and not decoder.pending


def test_decoder_drops_only_the_first_bom_and_only_at_the_start():
    """A second BOM stays (its line's field becomes unknown); bytes held back because they began
    like a BOM (U+FEFE shares two of its bytes; plain text one none) are kept."""
    expected = [ServerSentEvent("message", "b", None)]
    assert feed_pieces("\ufeff\ufeffdata: a\n\ndata: b\n\n".encode(), [1, 4])[0] == expected
    assert feed_pieces("\ufefedata: a\n\ndata: b\n\n".encode(), [1, 2])[0] == expected
    assert feed_pieces(b"data: b\n\n", [1, 2])[0] == expected
    assert feed_pieces("data: \ufeffa\n\n".encode(), [])[0] == [ServerSentEvent("message", "\ufeffa", None)]
