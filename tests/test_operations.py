"""Operators' view: Prometheus metrics after known traffic, and one JSON log line per stream start and end."""

import asyncio
import json
import logging

import httpx
from prometheus_client.parser import text_string_to_metric_families

from clients import chat_body, read_some


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_known_traffic(relay_url):
    """After 3 completed, 1 cancelled, 1 failed stream and 2 refusals, /metrics shows exactly those."""
    for i in range(3):
        await read_some("sse", relay_url, body=chat_body(f"ok {i}\n#mock tokens=5 interval_ms=1", "openai"))
    events = await read_some("ws", relay_url, body={**chat_body("c\n#mock tokens=500 interval_ms=5", "spark"),
                                                    "stream_id": "m-cancel"}, limit=3)
    async with httpx.AsyncClient() as client:
        await client.post(f"{relay_url}/v1/streams/m-cancel/cancel")
        await read_some("sse", relay_url, body=chat_body("f\n#mock tokens=5 fault=error_after:2", "spark"))
        await client.post(f"{relay_url}/v1/chat/sse", content=b"{bad")
        await client.post(f"{relay_url}/v1/chat/sse", json=chat_body("x", "nope"))
        await asyncio.sleep(0.2)
        text = (await client.get(f"{relay_url}/metrics")).text
    assert events[0]["type"] == "start"
    m = samples(text)
    assert value(m, "matrix_streams_ended_total", combo="sse-sse", upstream="openai", end="done", reason="stop") == 3
    assert value(m, "matrix_streams_ended_total", combo="ws-ws", upstream="spark", end="done",
                 reason="cancelled") == 1
    assert value(m, "matrix_streams_ended_total", combo="sse-ws", upstream="spark", end="error",
                 reason="upstream_rejected") == 1
    assert value(m, "matrix_upstream_errors_total", upstream="spark", code="upstream_rejected",
                 upstream_code="10014") == 1
    assert value(m, "matrix_tokens_relayed_total", combo="sse-sse", upstream="openai") == 15
    assert value(m, "matrix_time_to_first_token_seconds_count", combo="sse-sse", upstream="openai") == 3
    assert value(m, "matrix_stream_duration_seconds_count", combo="sse-sse", upstream="openai") == 3
    assert value(m, "matrix_streams_active", combo="sse-sse", upstream="openai") == 0
    assert value(m, "matrix_requests_refused_total", code="invalid_json") == 1
    assert value(m, "matrix_requests_refused_total", code="unknown_upstream") == 1


async def test_metrics_count_retries_resumes_heartbeats(make_relay):
    """Retries, resumes and heartbeats are counted."""
    relay = await make_relay(heartbeat_s=0.1, disconnect_grace_s=5)
    base = f"http://127.0.0.1:{relay.port}"
    await read_some("sse", base, body=chat_body("r\n#mock tokens=3 fault=http_503 fail_times=1", "openai"))
    await read_some("sse", base, body=chat_body("h\n#mock tokens=2 first_token_ms=500", "openai"))
    first = await read_some("ws", base, body={**chat_body("s\n#mock tokens=20 interval_ms=5", "baidu"),
                                              "stream_id": "m-res"}, limit=2)
    await read_some("sse", base, stream_id="m-res", after=first[-1]["seq"])
    async with httpx.AsyncClient() as client:
        m = samples((await client.get(f"{base}/metrics")).text)
    assert value(m, "matrix_upstream_retries_total", upstream="openai") == 1
    assert value(m, "matrix_resumes_total", transport="sse") == 1
    assert value(m, "matrix_heartbeats_sent_total") >= 2


async def test_one_json_log_line_per_stream_start_and_end(relay_url, caplog):
    """A stream logs a start and an end record with id, combo, upstream, ttft, tokens, reason; no answer text."""
    caplog.set_level(logging.INFO, logger="matrix")
    prompt = "logged secret-answer-marker\n#mock tokens=4 interval_ms=1"
    events = await read_some("ws", relay_url, body={**chat_body(prompt, "openai"), "stream_id": "log-1"})
    await asyncio.sleep(0.05)
    records = [r for r in caplog.records if getattr(r, "fields", {}).get("stream_id") == "log-1"]
    assert [r.getMessage() for r in records] == ["stream start", "stream end"]
    end = records[1].fields
    assert end["combo"] == "ws-sse" and end["upstream"] == "openai" and end["end"] == "done"
    assert end["reason"] == "stop" and end["tokens"] == 4 and end["ttft_ms"] >= 0 and end["duration_ms"] >= 0
    from matrix.logs import JSONFormatter
    lines = [JSONFormatter().format(r) for r in caplog.records]
    assert all(json.loads(line)["level"] for line in lines)
    answer = "".join(e["text"] for e in events if e["type"] == "delta")
    assert not any(answer in line or "secret-answer-marker" in line for line in lines)
