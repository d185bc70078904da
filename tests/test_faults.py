"""Every provider fault reaches the client as one terminal `error` event, never a hang or a silent end."""

import httpx
import pytest

from clients import CHAT, UPSTREAMS, assert_well_formed, chat_body, expected_text, text_of
from mock_ai import relay_upstreams

VENDOR = {name: cfg["kind"] for name, cfg in relay_upstreams().items()}  # mock vendor of each upstream
# fault -> (error code, vendor code expected per upstream or None, text expected before the error)
FAULTS = {
    "error_before": (None, {"spark": "10013", "anthropic": "overloaded_error", "realtime": "server_error"}, 0),
    "error_after:3": (None, {"anthropic": "overloaded_error", "realtime": "server_error"}, 3),
    "drop_after:3": ("upstream_protocol", {}, 3),
    "malformed_after:3": ("upstream_protocol", {}, 3),
    "stall_after:3": ("upstream_timeout", {}, 3),
    "http_500": ("upstream_unavailable", {"baidu": "500", "openai": "server_error", "spark": "500",
                                          "anthropic": "api_error", "realtime": "server_error"}, 0),
    "http_429": ("upstream_unavailable", {"anthropic": "rate_limit_error", "realtime": "rate_limit_exceeded"}, 0),
    "handshake_401": ("upstream_rejected", {"baidu": None, "openai": "invalid_api_key", "spark": "401",
                                            "anthropic": "authentication_error", "realtime": "invalid_api_key"}, 0),
}
CASES = [(down, up, fault) for fault in FAULTS for up in UPSTREAMS for down in ("sse", "ws")]


@pytest.fixture
async def quick_relay(make_relay):
    return await make_relay(upstream_idle_timeout_s=0.5, retry_attempts=2)


@pytest.mark.parametrize("down,up,fault", CASES, ids=[f"{d}-{u}-{f}" for d, u, f in CASES])
async def test_fault_ends_in_one_error_event(quick_relay, mock_url, down, up, fault):
    """The client sees the text sent before the fault, then exactly one error event with a code."""
    code, vendor_codes, before = FAULTS[fault]
    prompt = f"fault {fault}\n#mock tokens=10 interval_ms=2 fault={fault}"
    if UPSTREAMS[up] == "ws" and fault.startswith(("http_", "handshake_")):
        async with httpx.AsyncClient() as client:  # WS handshake faults are armed before the upgrade
            await client.post(f"{mock_url}/_mock/arm", json={"vendor": VENDOR[up],
                                                             "directive": f"fault={fault} fail_times=5"})
    events = await CHAT[down](f"http://127.0.0.1:{quick_relay.port}", chat_body(prompt, up))
    assert_well_formed(events)
    end = events[-1]
    assert end["type"] == "error", end
    assert end["message"]
    if code:
        assert end["code"] == code
    if vendor_codes.get(up):
        assert end["upstream_code"] == vendor_codes[up]
    if fault.startswith("error_"):
        assert end.get("upstream_code")  # every vendor error names the vendor's code
    if up == "spark" and fault == "handshake_401":  # the vendor's own words reach the client
        assert "HMAC signature cannot be verified" in end["message"]
    assert text_of(events) == expected_text(prompt)[:len(text_of(events))]
    assert len(text_of(events)) == len("".join(expected_text_tokens(prompt)[:before]))


def expected_text_tokens(prompt):
    from mock_ai.script import Script
    return Script.parse(prompt).answer_tokens()


async def test_retryable_failures_are_retried_before_the_first_token(relay_url):
    """A provider that fails twice with 503 then answers gives one clean stream."""
    prompt = "retry me\n#mock tokens=6 interval_ms=0 fault=http_503 fail_times=2"
    events = await CHAT["sse"](relay_url, chat_body(prompt, "openai"))
    assert_well_formed(events)
    assert events[-1]["type"] == "done" and text_of(events) == expected_text(prompt)


async def test_failure_after_first_token_is_not_retried(relay_url, mock_url):
    """A provider that fails after the first token gives an error, not a duplicated answer."""
    prompt = "no retry\n#mock tokens=6 interval_ms=0 fault=drop_after:2 tag=noretry"
    events = await CHAT["ws"](relay_url, chat_body(prompt, "baidu"))
    assert events[-1]["type"] == "error" and events[-1]["retryable"] is True
    assert text_of(events) == "".join(expected_text_tokens(prompt)[:2])
    async with httpx.AsyncClient() as client:
        stats = (await client.get(f"{mock_url}/_mock/stats", params={"tag": "noretry"})).json()
    assert len(stats["connections"]) == 1
