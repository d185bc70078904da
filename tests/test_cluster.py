"""Many relays, one set of streams: three real `matrix serve` on one real Redis, nginx round robin in front."""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import httpx
import pytest
import redis.asyncio as redis
import websockets
from hypothesis import HealthCheck, given, settings, strategies as st

from clients import TIMEOUT, UPSTREAMS, assert_well_formed, chat_body, expected_text, read_some, text_of
from cluster import LEASE_S, STREAM, cluster
from test_stop import STOP_BUDGET_S, provider_connection

GRACE = STREAM["disconnect_grace_s"]
SSE_UP, WS_UP = "openai", "spark"  # one upstream of each transport: with both downstreams, all four combinations
assert UPSTREAMS[SSE_UP] == "sse" and UPSTREAMS[WS_UP] == "ws"
COMBOS = [(down, up) for down in ("sse", "ws") for up in (SSE_UP, WS_UP)]
KEY_A, KEY_B = (f"tm-{name}-{secrets.token_urlsafe(16)}" for name in "ab")


@pytest.fixture
async def relays(tmp_path, mock_url):
    async with cluster(tmp_path, mock_url) as the_cluster:
        yield the_cluster


def bases(the_cluster) -> list[str]:
    return [base for _, base in the_cluster.replicas]


def new_id() -> str:
    return secrets.token_hex(6)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def long_prompt(tag: str, tokens: int = 2000, interval_ms: int = 20) -> str:
    """An answer that outlasts the test (40 s by default), its provider connection tagged `tag`."""
    return f"long {tag}\n#mock tokens={tokens} interval_ms={interval_ms} tag={tag}"


async def progressed(base: str, sid: str, seq: int, headers: dict | None = None) -> dict:
    """Poll GET /v1/streams/{sid} on `base` until the stream has reached `seq`; its status."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as client, asyncio.timeout(TIMEOUT):
        while True:
            response = await client.get(f"{base}/v1/streams/{sid}", headers=headers)
            if response.status_code == 200 and response.json()["last_seq"] >= seq:
                return response.json()
            await asyncio.sleep(0.02)


async def sse_with_key(base: str, key: str, body: dict) -> list[dict]:
    """POST /v1/chat/sse as `key`, every event to the end."""
    events = []
    async with httpx.AsyncClient(timeout=TIMEOUT) as client, asyncio.timeout(TIMEOUT):
        async with client.stream("POST", f"{base}/v1/chat/sse", json=body, headers=bearer(key)) as response:
            assert response.status_code == 200, await response.aread()
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
    return events


async def ws_messages(base: str, key: str, messages: list[dict]) -> list[dict]:
    """Send each message on a WebSocket authenticated as `key`, one reply to each."""
    async with asyncio.timeout(TIMEOUT):
        async with websockets.connect(base.replace("http", "ws", 1) + "/v1/chat/ws",
                                      additional_headers=bearer(key)) as ws:
            replies = []
            for message in messages:
                await ws.send(json.dumps(message))
                replies.append(json.loads(await ws.recv()))
            return replies


async def quietly(coro):
    """A client of the replica that is killed: its connection breaks, which is all it can see."""
    try:
        return await coro
    except (httpx.HTTPError, websockets.WebSocketException, OSError) as exc:
        return exc


async def readiness(bases_: list[str]) -> list[tuple[int, dict]]:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        answers = [await client.get(f"{base}/readyz") for base in bases_]
    return [(r.status_code, r.json()) for r in answers]


async def redis_clients(url: str) -> int:
    client = redis.from_url(url)
    try:
        return (await client.info("clients"))["connected_clients"] - 1  # not this one
    finally:
        await client.aclose()


async def test_every_replica_sees_a_stream_alike(relays):
    """Started on one replica, a stream's status and replay are the same from every other; all are ready."""
    a, b, c = bases(relays)
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        for base in (a, b, c):
            ready = await client.get(f"{base}/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        sid = new_id()
        prompt = "everywhere\n#mock tokens=12 interval_ms=5"
        full = await read_some("sse", a, body={**chat_body(prompt, SSE_UP), "stream_id": sid})
        assert_well_formed(full)
        assert full[-1]["type"] == "done" and text_of(full) == expected_text(prompt)
        for base in (b, c):
            status = (await client.get(f"{base}/v1/streams/{sid}")).json()
            assert status["finished"] is True and status["last_seq"] == full[-1]["seq"]
            assert status["upstream"] == SSE_UP and status["combo"] == "sse-sse" and status["end"] == full[-1]
            for down in ("sse", "ws"):
                assert await read_some(down, base, stream_id=sid, after=-1) == full
                assert await read_some(down, base, stream_id=sid, after=4) == full[5:]


@pytest.mark.parametrize("down,up,how", [("sse", SSE_UP, "http"), ("ws", WS_UP, "ws")])
async def test_cancel_through_a_replica_that_does_not_own_the_stream(relays, mock_url, down, up, how):
    """A stop sent to another replica (POST .../cancel, or WS cancel) closes the owner's provider connection."""
    a, b, _ = bases(relays)
    tag = new_id()
    owner_client = asyncio.create_task(read_some(down, a, body={**chat_body(long_prompt(tag), up), "stream_id": tag}))
    await provider_connection(mock_url, tag, ended=False)
    await progressed(b, tag, 3)
    if how == "http":
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:  # built before the clock starts
            stopped = time.monotonic()
            response = await client.post(f"{b}/v1/streams/{tag}/cancel")
        assert response.status_code == 200 and response.json()["stream_id"] == tag
    else:
        async with websockets.connect(b.replace("http", "ws", 1) + "/v1/chat/ws") as ws:
            await ws.send(json.dumps({"type": "resume", "stream_id": tag, "after": 2}))
            followed = [json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))]  # B follows the stream
            stopped = time.monotonic()
            await ws.send(json.dumps({"type": "cancel", "stream_id": tag}))
            async with asyncio.timeout(TIMEOUT):
                async for frame in ws:
                    followed.append(json.loads(frame))
                    if followed[-1]["type"] in ("done", "error"):
                        break
        assert [e["seq"] for e in followed] == list(range(3, 3 + len(followed)))
        assert followed[-1]["type"] == "done" and followed[-1]["reason"] == "cancelled", followed[-1]
    conn = await provider_connection(mock_url, tag, ended=True)
    assert conn["outcome"] == "client_closed" and conn["tokens_sent"] < 2000
    assert conn["closed_at"] - stopped < STOP_BUDGET_S, conn["closed_at"] - stopped
    events = await asyncio.wait_for(owner_client, TIMEOUT)
    assert_well_formed(events)
    assert events[-1]["type"] == "done" and events[-1]["reason"] == "cancelled"


@pytest.mark.parametrize("first,then,up", [("sse", "ws", SSE_UP), ("ws", "sse", WS_UP)])
async def test_resume_on_another_replica_within_grace_keeps_the_stream(relays, mock_url, first, then, up):
    """Dropped on A, resumed on B within the grace: the answer runs to its end, past A's grace timer."""
    a, b, _ = bases(relays)
    tag = new_id()
    # ~3 s of answer: it is still running when the grace A started at the drop runs out.
    prompt = long_prompt(tag, tokens=100, interval_ms=30)
    events = await read_some(first, a, body={**chat_body(prompt, up), "stream_id": tag}, limit=3)
    await asyncio.sleep(GRACE / 4)
    events += await read_some(then, b, stream_id=tag, after=events[-1]["seq"])
    assert_well_formed(events)
    assert events[-1]["type"] == "done" and events[-1]["reason"] == "stop"
    assert text_of(events) == expected_text(prompt)
    conn = await provider_connection(mock_url, tag, ended=True)
    assert conn["outcome"] == "completed" and conn["tokens_sent"] == 100


async def test_vanished_client_is_stopped_after_the_grace(relays, mock_url):
    """Dropped on A and resumed nowhere: the provider connection closes after the grace, not before."""
    a, b, c = bases(relays)
    tag = new_id()
    await read_some("ws", a, body={**chat_body(long_prompt(tag), WS_UP), "stream_id": tag}, limit=3)
    dropped = time.monotonic()
    conn = await provider_connection(mock_url, tag, ended=True)
    assert conn["outcome"] == "client_closed"
    assert GRACE - 0.1 <= conn["closed_at"] - dropped <= GRACE + 1.0, conn["closed_at"] - dropped
    for base in (b, c):
        events = await read_some("sse", base, stream_id=tag, after=-1)
        assert_well_formed(events)
        assert events[-1]["type"] == "done" and events[-1]["reason"] == "cancelled"


async def test_owner_check_holds_across_replicas(tmp_path, mock_url):
    """Another key's stream is 403 forbidden on every replica (status, resume, cancel, WS); its own key reaches it."""
    async with cluster(tmp_path, mock_url, config_extra=f"[auth]\nkeys = {json.dumps([KEY_A, KEY_B])}\n") as relays:
        a, b, c = bases(relays)
        tag = new_id()
        async with asyncio.TaskGroup() as group:
            mine = group.create_task(sse_with_key(a, KEY_A, {**chat_body(long_prompt(tag), SSE_UP), "stream_id": tag}))
            await provider_connection(mock_url, tag, ended=False)
            status = await progressed(b, tag, 2, bearer(KEY_A))
            assert status["owner"].startswith("key:")
            async with httpx.AsyncClient(timeout=TIMEOUT, headers=bearer(KEY_B)) as client:
                for base in (b, c):
                    answers = [await client.get(f"{base}/v1/streams/{tag}"),
                               await client.get(f"{base}/v1/streams/{tag}/events", headers={"Last-Event-ID": "0"}),
                               await client.post(f"{base}/v1/streams/{tag}/cancel")]
                    assert {(r.status_code, r.json()["error"]["code"]) for r in answers} == {(403, "forbidden")}
            replies = await ws_messages(c, KEY_B, [{"type": "resume", "stream_id": tag, "after": 0},
                                                   {"type": "cancel", "stream_id": tag}])
            assert [(r["type"], r["code"]) for r in replies] == [("error", "forbidden")] * 2
            # None of that stopped it: the provider still streams for its owner.
            assert (await provider_connection(mock_url, tag, ended=False))["outcome"] == "open"
            replies = await ws_messages(c, KEY_A, [{"type": "resume", "stream_id": tag, "after": 0}])
            assert replies[0]["seq"] == 1
            # A browser's ticket (EventSource and WebSocket cannot send headers), issued by A: once, on any replica.
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                ticket = (await client.post(f"{a}/v1/tickets", headers=bearer(KEY_A))).json()["ticket"]
                resume = {"ticket": ticket, "last_event_id": "0"}
                async with client.stream("GET", f"{b}/v1/streams/{tag}/events", params=resume) as first:
                    assert first.status_code == 200
                again = await client.get(f"{c}/v1/streams/{tag}/events", params=resume)
                assert again.status_code == 401 and again.json()["error"]["code"] == "unauthorized"
            async with httpx.AsyncClient(timeout=TIMEOUT, headers=bearer(KEY_A)) as client:
                assert (await client.post(f"{b}/v1/streams/{tag}/cancel")).status_code == 200
            events = await asyncio.wait_for(mine, TIMEOUT)
        assert_well_formed(events)
        assert events[-1]["type"] == "done" and events[-1]["reason"] == "cancelled"


async def test_live_streams_per_client_are_counted_across_replicas(tmp_path, mock_url):
    """With max_streams_per_client = 2, streams live on A and B make a third on C a 429, until one ends."""
    async with cluster(tmp_path, mock_url, config_extra="[limits]\nmax_streams_per_client = 2\n") as relays:
        a, b, c = bases(relays)
        tags = [new_id(), new_id()]
        async with asyncio.TaskGroup() as group:
            live = [group.create_task(read_some(down, base, body={**chat_body(long_prompt(tag), up), "stream_id": tag}))
                    for down, up, base, tag in zip(("sse", "ws"), (SSE_UP, WS_UP), (a, b), tags)]
            for tag in tags:
                await provider_connection(mock_url, tag, ended=False)
            refused = await read_some("sse", c, body=chat_body("third\n#mock tokens=3", SSE_UP))
            assert refused[0]["http_status"] == 429 and refused[0]["code"] == "too_many_streams"
            refused = await read_some("ws", c, body=chat_body("third\n#mock tokens=3", WS_UP))
            assert refused[0]["type"] == "error" and refused[0]["code"] == "too_many_streams"
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                assert (await client.post(f"{c}/v1/streams/{tags[0]}/cancel")).status_code == 200
            assert (await asyncio.wait_for(live[0], TIMEOUT))[-1]["reason"] == "cancelled"
            # The slot comes back when the owner releases it, just after the terminal event.
            prompt = "admitted\n#mock tokens=3 interval_ms=1"
            async with asyncio.timeout(LEASE_S):
                while (events := await read_some("sse", c, body=chat_body(prompt, SSE_UP)))[0]["type"] == "error":
                    assert events[0]["code"] == "too_many_streams", events[0]
                    await asyncio.sleep(0.05)
            assert_well_formed(events)
            assert text_of(events) == expected_text(prompt)
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                assert (await client.post(f"{a}/v1/streams/{tags[1]}/cancel")).status_code == 200
            assert (await asyncio.wait_for(live[1], TIMEOUT))[-1]["reason"] == "cancelled"


async def test_killed_owner_ends_its_streams_with_one_relay_lost(relays, mock_url):
    """kill -9 of the owner: followers elsewhere get one terminal error, relay_lost (retryable), as does a resume."""
    (owner, a), (_, b), (_, c) = relays.replicas
    tag = new_id()
    async with asyncio.TaskGroup() as group:
        group.create_task(quietly(read_some("sse", a, body={**chat_body(long_prompt(tag), SSE_UP), "stream_id": tag})))
        await provider_connection(mock_url, tag, ended=False)
        await progressed(b, tag, 3)
        followers = [group.create_task(read_some("sse", b, stream_id=tag, after=-1)),
                     group.create_task(read_some("ws", c, stream_id=tag, after=1))]
        await progressed(c, tag, 6)
        await asyncio.sleep(0.2)  # the followers are connected by now (a later one would get the same end)
        owner.kill()
        await owner.wait()
        killed = time.monotonic()
        async with asyncio.timeout(3 * LEASE_S):
            sse_events, ws_events = [await follower for follower in followers]
        print(f"followers ended {time.monotonic() - killed:.2f} s after the kill (lease {LEASE_S} s)")
    assert_well_formed(sse_events)
    assert [e["seq"] for e in ws_events] == list(range(2, 2 + len(ws_events)))
    for events in (sse_events, ws_events):
        end = events[-1]
        assert end["type"] == "error" and end["code"] == "relay_lost" and end["retryable"] is True, end
        assert [e["type"] for e in events].count("error") + [e["type"] for e in events].count("done") == 1
    assert ws_events[-1] == sse_events[-1] and ws_events == sse_events[2:]
    # The provider connection went with its process.
    assert (await provider_connection(mock_url, tag, ended=True))["outcome"] == "client_closed"
    # Later, after another lease in which a second writer of the end would have shown: still one end.
    await asyncio.sleep(LEASE_S)
    for base, down in ((b, "ws"), (c, "sse")):
        assert await read_some(down, base, stream_id=tag, after=-1) == sse_events
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        status = (await client.get(f"{b}/v1/streams/{tag}")).json()
    assert status["finished"] is True and status["end"] == sse_events[-1]


async def test_redis_stopped_mid_stream_and_restarted(relays, mock_url):
    """Redis gone: live streams end with engine_unavailable, starts get 503, /readyz 503, /healthz 200.
    Redis back on the same port: /readyz 200 and new streams run, with no relay restarted."""
    a, b, c = bases(relays)
    tag = new_id()
    body = {**chat_body(long_prompt(tag), SSE_UP), "stream_id": tag, "conversation_id": tag}  # the relays' SQLite
    async with asyncio.TaskGroup() as group:
        live = [group.create_task(read_some("sse", a, body=body))]
        await provider_connection(mock_url, tag, ended=False)
        await progressed(b, tag, 3)
        live.append(group.create_task(read_some("ws", b, stream_id=tag, after=-1)))
        await progressed(b, tag, 6)
        await relays.redis.stop()
        async with asyncio.timeout(TIMEOUT):  # ends, rather than hangs
            ended = [await task for task in live]
    for events in ended:
        assert_well_formed(events)
        assert events[-1]["type"] == "error" and events[-1]["code"] == "engine_unavailable", events[-1]
    # The owner cannot record the answer any more, so it stops paying for it.
    assert (await provider_connection(mock_url, tag, ended=True))["outcome"] == "client_closed"
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:  # the conversation keeps what the owner's client got
        saved = (await client.get(f"{a}/v1/conversations/{tag}")).json()["messages"][-1]
    assert (saved["status"], saved["text"]) == ("engine_unavailable", text_of(ended[0]))
    for base in (a, b, c):
        refused = await read_some("sse", base, body=chat_body("while down\n#mock tokens=3", SSE_UP))
        assert refused[0]["http_status"] == 503 and refused[0]["code"] == "engine_unavailable", refused
    refused = await read_some("ws", c, body=chat_body("while down\n#mock tokens=3", WS_UP))
    assert refused[0]["type"] == "error" and refused[0]["code"] == "engine_unavailable", refused
    for status, body in await readiness([a, b, c]):
        assert status == 503 and body["status"] == "not_ready" and body["reason"], body
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        assert {(await client.get(f"{base}/healthz")).status_code for base in (a, b, c)} == {200}

    await relays.redis.start()
    async with asyncio.timeout(TIMEOUT):
        while {status for status, _ in await readiness([a, b, c])} != {200}:
            await asyncio.sleep(0.1)
    for i, (down, up) in enumerate(COMBOS):  # every combination, each resumed on another replica
        sid = new_id()
        prompt = f"after the restart {i}\n#mock tokens=8 interval_ms=2"
        events = await read_some(down, (a, b, c)[i % 3], body={**chat_body(prompt, up), "stream_id": sid})
        assert events[0]["type"] == "start", events[0]
        assert_well_formed(events)
        assert events[-1]["type"] == "done" and text_of(events) == expected_text(prompt)
        resumed = await read_some(down, (a, b, c)[(i + 1) % 3], stream_id=sid, after=-1)
        assert resumed[0]["type"] == "start", resumed[0]
        assert resumed == events
    # No connection kept per stream: a dozen more leave Redis's client count where it was, give or
    # take a pool growing by a connection here and there.
    connections = await redis_clients(relays.redis.url)
    for i in range(12):
        prompt = "one of a dozen\n#mock tokens=4 interval_ms=1"
        assert (await read_some("sse", (a, b, c)[i % 3], body=chat_body(prompt, SSE_UP)))[-1]["type"] == "done"
    assert await redis_clients(relays.redis.url) < connections + 6
    assert all(proc.returncode is None for proc, _ in relays.replicas)


@pytest.mark.parametrize("down,up", COMBOS, ids=[f"{down}-{UPSTREAMS[up]}-{up}" for down, up in COMBOS])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limits=st.lists(st.integers(1, 8), min_size=1, max_size=4))
async def test_drops_and_reconnects_through_nginx_give_every_event_once(relays, down, up, limits):
    """Through nginx round robin, each reconnect lands on another replica: every event once, in order, text exact."""
    sid = new_id()
    prompt = f"cluster {sid}\n#mock tokens=25 interval_ms=10"
    logged = len(relays.served_by())
    events = await read_some(down, relays.nginx_url, body={**chat_body(prompt, up), "stream_id": sid}, limit=limits[0])
    connections = 1
    for limit in [*limits[1:], None]:  # None: the last reconnect reads to the end
        if events[-1]["type"] in ("done", "error"):
            break
        events += await read_some(down, relays.nginx_url, stream_id=sid, after=events[-1]["seq"], limit=limit)
        connections += 1
    assert_well_formed(events)
    assert events[-1]["type"] == "done" and text_of(events) == expected_text(prompt)
    # Only this example used nginx meanwhile: round robin put no two connections in a row on one replica.
    async with asyncio.timeout(TIMEOUT):  # nginx logs a request once it has seen the client leave
        while len(served_by := relays.served_by()[logged:]) < connections:
            await asyncio.sleep(0.02)
    assert len(served_by) == connections and all(x != y for x, y in zip(served_by, served_by[1:])), served_by


async def test_a_conversation_across_replicas_saves_each_answer_once(tmp_path, mock_url, postgres):
    """Replicas sharing PostgreSQL: a turn started on A, resumed on B and read on C is saved once,
    and the next turn, on B, sends the provider the whole history; a turn whose relay is killed
    is saved by the relay that ends it, as relay_lost, with the text its followers got."""
    store = f'[store]\nurl = "{await postgres.create_database()}"\n'
    async with cluster(tmp_path, mock_url, config_extra=store) as the_cluster:
        a, b, c = bases(the_cluster)
        cid, sid, tag = new_id(), new_id(), new_id()
        prompt = long_prompt(sid, tokens=60, interval_ms=20)
        body = {**chat_body(prompt, WS_UP), "stream_id": sid, "conversation_id": cid}
        events = await read_some("sse", a, body=body, limit=4)
        rest, again = await asyncio.gather(read_some("ws", b, stream_id=sid, after=events[-1]["seq"]),
                                           read_some("sse", c, stream_id=sid, after=-1))
        events += rest
        assert events[-1]["type"] == "done" and text_of(events) == text_of(again) == expected_text(prompt)
        nxt = f"next\n#mock tokens=3 interval_ms=0 tag={tag}"
        assert (await read_some("ws", b, body={**chat_body(nxt, SSE_UP), "conversation_id": cid}))[-1]["type"] == "done"
        assert (await provider_connection(mock_url, tag, ended=True))["messages"] == [
            ["user", prompt], ["assistant", text_of(events)], ["user", nxt]]
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            saved = (await client.get(f"{c}/v1/conversations/{cid}")).json()["messages"]
        assert [(m["role"], m.get("stream_id")) for m in saved][:2] == [("user", None), ("assistant", sid)]
        assert len(saved) == 4 and saved[1]["text"] == text_of(events) and saved[1]["status"] == "stop"
        lost = new_id()
        body = {**chat_body(long_prompt(lost), SSE_UP), "stream_id": lost, "conversation_id": cid}
        async with asyncio.TaskGroup() as group:
            group.create_task(quietly(read_some("ws", a, body=body)))
            await progressed(b, lost, 5)
            follower = group.create_task(read_some("sse", b, stream_id=lost, after=-1))
            await progressed(c, lost, 8)
            the_cluster.replicas[0][0].kill()
            followed = await follower
        assert followed[-1]["code"] == "relay_lost" and text_of(followed)
        async with httpx.AsyncClient(timeout=TIMEOUT) as client, asyncio.timeout(TIMEOUT):
            while len(saved := (await client.get(f"{c}/v1/conversations/{cid}")).json()["messages"]) < 6:
                await asyncio.sleep(0.05)
        assert (saved[5]["status"], saved[5]["text"], saved[5]["stream_id"]) == ("relay_lost", text_of(followed), lost)
