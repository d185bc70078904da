"""The conversation store when things go wrong: a relay restarted or stopped mid-stream, a database down or gone."""

from __future__ import annotations

import asyncio
import signal
import uuid

import httpx
import pytest

from clients import TIMEOUT, chat_body, expected_text, free_port, matrix_serve, read_some, text_of
from mock_ai import relay_upstreams
from pgd import postgres_server
from test_stop import provider_connection

QUICK = "\n#mock tokens=3 interval_ms=0"


def ask(text: str, cid: str | None, upstream: str = "openai", **extra) -> dict:
    return chat_body(text, upstream, **({"conversation_id": cid} if cid else {}), **extra)


async def conversation(base: str, cid: str) -> dict:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(f"{base}/v1/conversations/{cid}")
    assert response.status_code == 200, response.text
    return response.json()


def serve_config(port: int, mock_port: int, store_url: str) -> str:
    upstreams = relay_upstreams(f"127.0.0.1:{mock_port}")
    tables = "".join(f'[upstreams.{name}]\n' + "".join(f'{k} = "{v}"\n' for k, v in table.items())
                     for name, table in upstreams.items())
    return (f'[server]\nport = {port}\ndefault_upstream = "openai"\ndrain_timeout_s = 0.3\n'
            f'[store]\nurl = "{store_url}"\n' + tables)


@pytest.mark.parametrize("store_kind", ["sqlite", "postgresql"])
async def test_sigterm_saves_the_answer_so_far_and_a_restart_keeps_everything(tmp_path, mock, mock_url,
                                                                               store_config):
    """A real `matrix serve`: SIGTERM mid-answer saves it as shutting_down; the next process continues."""
    port, cid, tag = free_port(), uuid.uuid4().hex, uuid.uuid4().hex[:10]
    config = tmp_path / "matrix.toml"
    config.write_text(serve_config(port, mock.port, store_config.url.get_secret_value()))
    long_prompt = f"long\n#mock tokens=5000 interval_ms=10 tag={tag}"
    async with matrix_serve("--config", str(config), port=port) as (proc, base):
        first = await read_some("sse", base, body=ask("first" + QUICK, cid))
        cut = asyncio.create_task(read_some("ws", base, body=ask(long_prompt, cid, "spark")))
        await provider_connection(mock_url, tag, ended=False)
        await asyncio.sleep(0.1)  # some text on its way
        proc.send_signal(signal.SIGTERM)
        cut_events = await cut
        assert cut_events[-1]["code"] == "shutting_down" and text_of(cut_events)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    async with matrix_serve("--config", str(config), port=port) as (proc, base):
        saved = (await conversation(base, cid))["messages"]
        assert [(m["role"], m["text"], m.get("status")) for m in saved] == [
            ("user", "first" + QUICK, None), ("assistant", text_of(first), "stop"),
            ("user", long_prompt, None), ("assistant", text_of(cut_events), "shutting_down")]
        third = await read_some("sse", base, body=ask("third" + QUICK, cid))
        assert third[-1]["type"] == "done"
        assert len((await conversation(base, cid))["messages"]) == 6


async def test_a_database_down_at_start_up_refuses_conversations_only_until_it_is_up(make_relay):
    """Streams without a conversation never notice; with one: 503 store_unavailable, retryable, then it heals."""
    with postgres_server() as pg:
        pg.stop()  # its port is known and nothing listens there
        relay = await make_relay(store={"url": pg.url(), "timeout_s": 1})
        base, cid = f"http://127.0.0.1:{relay.port}", uuid.uuid4().hex
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client:
            health = (await client.get("/healthz")).json()
            assert health["status"] == "ok" and f"127.0.0.1:{pg.port}" in health["store"]
            assert (await client.get("/readyz")).status_code == 200  # streams can start: stay in rotation
            for down in ("sse", "ws"):
                plain = await read_some(down, base, body=ask("plain" + QUICK, None))
                assert plain[-1]["type"] == "done" and text_of(plain) == expected_text("plain" + QUICK)
                [refusal] = await read_some(down, base, body=ask("kept" + QUICK, cid))
                assert refusal["code"] == "store_unavailable", refusal
                assert refusal.get("retryable", refusal.get("http_status") == 503) is True  # WS says, HTTP is 503
            listing = await client.get("/v1/conversations")
            assert listing.status_code == 503 and listing.json()["error"]["code"] == "store_unavailable"
            pg.start()
            async with asyncio.timeout(TIMEOUT):  # the relay opens the store at a request after REOPEN_S
                while (events := await read_some("sse", base, body=ask("kept" + QUICK, cid)))[-1]["type"] != "done":
                    assert events[-1]["code"] == "store_unavailable"
                    await asyncio.sleep(0.2)
            assert (await client.get("/healthz")).json()["store"] is None
        assert [m["role"] for m in (await conversation(base, cid))["messages"]] == ["user", "assistant"]


async def test_postgres_stopped_mid_run(make_relay, mock_url):
    """The answer streaming when it stops still reaches its client (its copy is lost, and counted);
    new conversations are refused with 503, plain streams go on, and all heals when it is back."""
    with postgres_server() as pg:
        relay = await make_relay(store={"url": pg.url(), "timeout_s": 1})
        base, cid, tag = f"http://127.0.0.1:{relay.port}", uuid.uuid4().hex, uuid.uuid4().hex[:10]
        first = await read_some("sse", base, body=ask("before" + QUICK, cid))
        prompt = f"during\n#mock tokens=40 interval_ms=20 tag={tag}"
        during = asyncio.create_task(read_some("ws", base, body=ask(prompt, cid, "spark")))
        await provider_connection(mock_url, tag, ended=False)
        pg.stop()
        events = await during
        assert events[-1]["type"] == "done" and text_of(events) == expected_text(prompt)
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client:
            assert 'matrix_conversation_answers_total{result="failed"} 1.0' in (await client.get("/metrics")).text
            for down in ("sse", "ws"):
                assert (await read_some(down, base, body=ask("plain" + QUICK, None)))[-1]["type"] == "done"
                [refusal] = await read_some(down, base, body=ask("refused" + QUICK, cid))
                assert refusal["code"] == "store_unavailable", refusal
                assert refusal.get("retryable", refusal.get("http_status") == 503) is True  # WS says, HTTP is 503
            assert "unavailable" in (await client.get("/healthz")).json()["store"]
            pg.start()
            async with asyncio.timeout(TIMEOUT):  # the pool's dead connections fail once, then it reconnects
                while (await read_some("sse", base, body=ask("after" + QUICK, cid)))[-1]["type"] != "done":
                    await asyncio.sleep(0.2)
        saved = [(m["role"], m["text"]) for m in (await conversation(base, cid))["messages"]]
        assert saved[:3] == [("user", "before" + QUICK), ("assistant", text_of(first)), ("user", prompt)]
        assert saved[-2][1] == "after" + QUICK and saved[-1][0] == "assistant"
        assert ("assistant", text_of(events)) not in saved  # it could not be saved: no copy appears later


async def test_a_sqlite_file_that_cannot_be_opened_is_a_clear_refusal(make_relay, tmp_path):
    relay = await make_relay(store={"url": f"sqlite:///{tmp_path}/missing-dir/matrix.db", "timeout_s": 1})
    base = f"http://127.0.0.1:{relay.port}"
    assert (await read_some("sse", base, body=ask("plain" + QUICK, None)))[-1]["type"] == "done"
    [refusal] = await read_some("sse", base, body=ask("kept" + QUICK, "c1"))
    assert refusal["code"] == "store_unavailable" and "missing-dir" in refusal["message"]
