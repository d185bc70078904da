"""End to end over real sockets: every combination with every upstream relays the exact answer."""

import pytest

from clients import CHAT, UPSTREAMS, assert_well_formed, chat_body, expected_text, text_of

CASES = [(down, up) for down in ("sse", "ws") for up in UPSTREAMS]

# Every test here runs on both engines: one relay's memory, and Redis (tests/redisd.py).
pytestmark = pytest.mark.parametrize("engine", ["memory", "redis"])


@pytest.mark.parametrize("down,up", CASES, ids=[f"{d}-{UPSTREAMS[u]}-{u}" for d, u in CASES])
async def test_answer_relayed_exactly(relay_url, down, up):
    """The concatenated deltas equal the provider's answer byte for byte; seq is contiguous; one end."""
    prompt = f"matrix {down} {up}\n#mock tokens=30 interval_ms=1"
    events = await CHAT[down](relay_url, chat_body(prompt, up))
    assert_well_formed(events)
    assert events[0]["combo"] == f"{down}-{UPSTREAMS[up]}" and events[0]["upstream"] == up
    assert text_of(events) == expected_text(prompt)
    assert events[-1]["type"] == "done" and events[-1]["reason"] == "stop"


@pytest.mark.parametrize("down,up", CASES, ids=[f"{d}-{UPSTREAMS[u]}-{u}" for d, u in CASES])
async def test_split_frames_keep_multibyte_text(relay_url, down, up):
    """Provider frames split every 3 bytes (inside UTF-8 characters) still reassemble exactly."""
    prompt = f"split {up}\n#mock tokens=10 interval_ms=0 split=3"
    events = await CHAT[down](relay_url, chat_body(prompt, up))
    assert_well_formed(events)
    assert text_of(events) == expected_text(prompt)


async def test_usage_reaches_the_client(relay_url):
    """The provider's token usage arrives on the done event."""
    events = await CHAT["sse"](relay_url, chat_body("usage\n#mock tokens=5 interval_ms=0", "openai"))
    assert events[-1]["usage"]["completion_tokens"] == 5
    events = await CHAT["ws"](relay_url, chat_body("usage\n#mock tokens=5 interval_ms=0", "spark"))
    assert events[-1]["usage"]["completion_tokens"] == 5
