"""Client identity: a stream's owner follows its key (or its client's name), never the key's position."""

from __future__ import annotations

import secrets

import httpx
import pytest

from clients import TIMEOUT, chat_body, free_port, matrix_serve
from matrix.app import create_app
from matrix.config import Settings
from matrix.errors import ConfigError
from mock_ai import relay_upstreams

A, B, C = (f"tm-{name}-{secrets.token_urlsafe(16)}" for name in "abc")


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def make_auth_relay(aiohttp_server, mock):
    """A relay on the test's mock with the given [auth] section."""
    async def make(**auth) -> str:
        settings = Settings(upstreams=relay_upstreams(f"127.0.0.1:{mock.port}"), auth=auth,
                            stream={"replay_ttl_s": 30, "retry_backoff_s": 0.01})
        server = await aiohttp_server(create_app(settings))
        return f"http://127.0.0.1:{server.port}"
    return make


async def start(client: httpx.AsyncClient, base: str, key: str) -> str:
    """Run one short stream to its end with `key`; returns its id (it stays for replay_ttl_s)."""
    sid = f"own-{secrets.token_hex(6)}"
    body = {**chat_body("mine\n#mock tokens=3 interval_ms=0", "openai"), "stream_id": sid}
    response = await client.post(f"{base}/v1/chat/sse", json=body, headers=bearer(key))
    assert response.status_code == 200 and "event: done" in response.text
    return sid


async def touch(client: httpx.AsyncClient, base: str, sid: str, key: str) -> set[int]:
    """The statuses of status, resume and cancel on stream `sid` with `key`."""
    answers = [await client.get(f"{base}/v1/streams/{sid}", headers=bearer(key)),
               await client.get(f"{base}/v1/streams/{sid}/events", headers={**bearer(key), "Last-Event-ID": "0"}),
               await client.post(f"{base}/v1/streams/{sid}/cancel", headers=bearer(key))]
    return {answer.status_code for answer in answers}


async def owner(client: httpx.AsyncClient, base: str, sid: str, key: str) -> str:
    response = await client.get(f"{base}/v1/streams/{sid}", headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()["owner"]


async def test_owner_follows_the_key_not_its_position(make_auth_relay):
    """Relays listing the keys in other orders, or with a new key in front, agree on every owner."""
    bases = [await make_auth_relay(keys=[A, B]), await make_auth_relay(keys=[B, A]),
             await make_auth_relay(keys=[C, B, A])]
    owners = {A: set(), B: set()}
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        for base in bases:
            for key, other in ((A, B), (B, A)):
                sid = await start(client, base, key)
                owners[key].add(await owner(client, base, sid, key))
                assert await touch(client, base, sid, other) == {403}
                assert await touch(client, base, sid, key) == {200}
    assert len(owners[A]) == len(owners[B]) == 1 and owners[A] != owners[B]
    assert all(o.startswith("key:") for o in owners[A] | owners[B])


async def test_a_rotated_client_reaches_its_streams_with_either_key(make_auth_relay):
    """Old and new key of one named client both reach its streams, over SSE and a WS ticket; others get 403."""
    old, new = A, B
    base = await make_auth_relay(clients={"webapp": [new, old], "batch": C})
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        sid = await start(client, base, old)
        assert await owner(client, base, sid, new) == "client:webapp"
        assert await touch(client, base, sid, C) == {403}
        assert await touch(client, base, sid, new) == {200}
        ticket = (await client.post(f"{base}/v1/tickets", headers=bearer(new))).json()["ticket"]
        resumed = await client.get(f"{base}/v1/streams/{sid}/events?ticket={ticket}", headers={"Last-Event-ID": "0"})
        assert resumed.status_code == 200 and "event: done" in resumed.text
        theirs = await start(client, base, C)
        assert await owner(client, base, theirs, C) == "client:batch"
        assert await touch(client, base, theirs, old) == {403}


async def test_owner_survives_a_restart_with_reordered_keys(tmp_path, mock):
    """A real `matrix serve` restarted with the keys reordered and a new one in front gives the same owner."""
    port = free_port()
    upstream = f"""
[upstreams.openai]
kind = "openai"
url = "http://127.0.0.1:{mock.port}/v1/chat/completions"
api_key = "mock-key"
model = "qwen-plus"
"""
    seen = []
    for keys in ([A, B], [C, B, A]):
        config = tmp_path / "matrix.toml"
        config.write_text(f"[auth]\nkeys = {keys!r}\n".replace("'", '"') + upstream)
        async with matrix_serve("--config", str(config), "--port", str(port), port=port) as (_, base):
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                sid = await start(client, base, A)
                seen.append(await owner(client, base, sid, A))
                assert await touch(client, base, sid, B) == {403}
    assert seen[0] == seen[1]


@pytest.mark.parametrize("auth, problem", [
    ({"keys": [A, A]}, r"auth.keys\[1\] repeats the key of auth.keys\[0\]"),
    ({"keys": [A], "clients": {"web": [B, A]}}, r"auth.keys\[0\] repeats the key of auth.clients.web"),
    ({"clients": {"web app": A}}, "client name"),
    ({"clients": {"web": []}}, "auth.clients.web has no key"),
    ({"keys": [""]}, "empty key"),
])
def test_ambiguous_keys_are_refused(tmp_path, auth, problem):
    """A key given to two clients, a bad client name, a client without keys or an empty key refuse to load."""
    from matrix.config import load
    lines = ["[auth]"]
    if "keys" in auth:
        lines.append(f"keys = {auth['keys']!r}".replace("'", '"'))
    for name, keys in auth.get("clients", {}).items():
        lines.append(f'clients."{name}" = {keys!r}'.replace("'", '"'))
    lines += ["[upstreams.o]", 'kind = "openai"', 'url = "http://127.0.0.1:9/v1/chat/completions"']
    path = tmp_path / "auth.toml"
    path.write_text("\n".join(lines))
    with pytest.raises(ConfigError, match=problem) as refused:
        load(path)
    assert A not in str(refused.value) and B not in str(refused.value)
