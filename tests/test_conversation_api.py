"""`/v1/conversations` and conversation requests: pages, rename, delete, owners with keys, hostile input."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
import websockets

from clients import TIMEOUT, chat_body, read_some, text_of

KEY_A, KEY_B = "tm-conv-alice-0123456789", "tm-conv-bob-0123456789"
QUICK = "\n#mock tokens=2 interval_ms=0"


def bearer(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def say(base: str, cid: str, text: str, key: str | None = None) -> httpx.Response:
    """One conversation turn over SSE, read whole: the response (its body holds the events)."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        return await client.post(f"{base}/v1/chat/sse", headers=bearer(key),
                                 json=chat_body(text + QUICK, "openai", conversation_id=cid))


def refused(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


@pytest.fixture
async def api(relay_url):
    async with httpx.AsyncClient(base_url=relay_url, timeout=TIMEOUT) as client:
        yield client


async def test_list_pages_newest_first_with_a_cursor(relay_url, api):
    for n in range(5):
        assert (await say(relay_url, f"page-{n}", f"conversation {n}")).status_code == 200
    await say(relay_url, "page-1", "again")  # a new turn moves it to the front
    seen, cursor = [], None
    while True:
        page = (await api.get("/v1/conversations", params={"limit": 2, **({"cursor": cursor} if cursor else {})})).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [c["id"] for c in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["page-1", "page-4", "page-3", "page-2", "page-0"]
    whole = (await api.get("/v1/conversations")).json()
    assert [c["id"] for c in whole["data"]] == seen and whole["next_cursor"] is None
    assert whole["data"][0]["title"] == "conversation 1 #mock tokens=2 interval_ms=0"  # the first message's start


async def test_rename_and_delete(relay_url, api):
    await say(relay_url, "renamed", "hello")
    response = await api.patch("/v1/conversations/renamed", json={"title": "  Trip plans  "})
    assert response.status_code == 200 and response.json()["title"] == "Trip plans"
    assert (await api.get("/v1/conversations/renamed")).json()["title"] == "Trip plans"
    assert (await api.delete("/v1/conversations/renamed")).status_code == 204
    refused(await api.get("/v1/conversations/renamed"), 404, "conversation_not_found")
    refused(await api.delete("/v1/conversations/renamed"), 404, "conversation_not_found")
    refused(await api.patch("/v1/conversations/renamed", json={"title": "x"}), 404, "conversation_not_found")
    assert "renamed" not in [c["id"] for c in (await api.get("/v1/conversations")).json()["data"]]
    await say(relay_url, "renamed", "a fresh start")  # the id may start a new conversation
    assert len((await api.get("/v1/conversations/renamed")).json()["messages"]) == 2


async def test_with_keys_a_conversation_is_its_creators(make_relay):
    relay = await make_relay(auth={"keys": [KEY_A, KEY_B]})
    base = f"http://127.0.0.1:{relay.port}"
    assert (await say(base, "alices", "mine", KEY_A)).status_code == 200
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as api:
        refused(await api.get("/v1/conversations/alices"), 401, "unauthorized")
        for call in (api.get("/v1/conversations/alices", headers=bearer(KEY_B)),
                     api.patch("/v1/conversations/alices", json={"title": "theirs"}, headers=bearer(KEY_B)),
                     api.delete("/v1/conversations/alices", headers=bearer(KEY_B))):
            refused(await call, 403, "forbidden")
        refused(await say(base, "alices", "let me in", KEY_B), 403, "forbidden")
        refused(await api.get("/v1/conversations/nobodys", headers=bearer(KEY_B)), 404, "conversation_not_found")
        assert (await api.get("/v1/conversations", headers=bearer(KEY_B))).json()["data"] == []
        mine = (await api.get("/v1/conversations/alices", headers=bearer(KEY_A))).json()
        assert [m["role"] for m in mine["messages"]] == ["user", "assistant"]  # B's refused turn left nothing
    async with websockets.connect(base.replace("http", "ws") + "/v1/chat/ws",
                                  additional_headers=bearer(KEY_B)) as ws:
        await ws.send(json.dumps({"type": "chat", **chat_body("ws" + QUICK, "spark", conversation_id="alices")}))
        error = json.loads(await ws.recv())
        assert (error["type"], error["code"], error.get("seq")) == ("error", "forbidden", None)


@pytest.mark.parametrize("cid", ["..", "a/b", "a b", "x" * 65, "é", "a.b", "%00", "a%0Ab"])
async def test_hostile_ids_are_refused(relay_url, api, cid):
    response = await say(relay_url, cid, "hi")
    refused(response, 400, "invalid_conversation_id")
    path = await api.get(f"/v1/conversations/{cid}")
    assert path.status_code in (400, 404), path.text  # a `/` or `..` in the path may not reach the handler
    assert path.json()["error"]["code"] in ("invalid_conversation_id", "not_found")


@pytest.mark.parametrize("value", [1, "", None, ["a"], {"id": "a"}, True])
async def test_conversation_ids_of_the_wrong_shape(relay_url, value):
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        body = chat_body("x" + QUICK, "openai", conversation_id=value)
        response = await client.post(f"{relay_url}/v1/chat/sse", json=body)
    if value is None:  # null: no conversation, a plain stream
        assert response.status_code == 200
    else:
        assert response.status_code in (400, 422) and response.json()["error"]["param"] == "conversation_id"


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "old"}, {"role": "assistant", "content": "kept by the relay"},
     {"role": "user", "content": "new"}],
    [{"role": "assistant", "content": "no user message last"}],
    [{"role": "user", "content": "a"}, {"role": "system", "content": "system goes first"}],
])
async def test_a_conversation_request_sends_only_the_new_message(relay_url, api, messages):
    response = await api.post("/v1/chat/sse", json={"messages": messages, "conversation_id": "shape"})
    assert refused(response, 400, "invalid_request")["param"] == "messages"
    refused(await api.get("/v1/conversations/shape"), 404, "conversation_not_found")  # nothing saved


@pytest.mark.parametrize("text", ["nul \x00 inside", "lone \ud800 surrogate"])
async def test_text_no_database_can_keep_is_refused(relay_url, api, text):
    response = await api.post("/v1/chat/sse", content=json.dumps(chat_body(text, conversation_id="odd")).encode(),
                              headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    refused(await api.get("/v1/conversations/odd"), 404, "conversation_not_found")


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "101"}, {"limit": "-1"}, {"limit": "ten"},
                                   {"limit": "1e3"}, {"limit": "²"}, {"cursor": "not a cursor"},
                                   {"cursor": base64.urlsafe_b64encode(b"12.x/../y").decode()},
                                   {"cursor": "A" * 4000}, {"page": "2"}])
async def test_hostile_queries_are_refused(api, query):
    response = await api.get("/v1/conversations", params=query)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in ("invalid_request", "invalid_cursor")


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"title": 5}', b'{"title": ""}', b'{"title": "a\\nb"}',
                                  b'{"title": "' + b"x" * 201 + b'"}', b'{"title": "ok", "owner": "me"}', b"{}"])
async def test_hostile_rename_bodies_are_refused(relay_url, api, body):
    await say(relay_url, "titled", "hello")
    response = await api.patch("/v1/conversations/titled", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] in ("invalid_request", "invalid_json")
    assert (await api.get("/v1/conversations/titled")).json()["title"] == "hello #mock tokens=2 interval_ms=0"


async def test_the_relay_serves_on_after_hostile_input(relay_url, api):
    """After all of the above on one relay: other streams and conversations still work."""
    for cid in ("..", "x" * 65):
        await say(relay_url, cid, "bad")
    await api.get("/v1/conversations", params={"cursor": "garbage"})
    events = await read_some("ws", relay_url, body=chat_body("fine" + QUICK, "spark", conversation_id="fine"))
    assert events[-1]["type"] == "done" and text_of(events)
    assert len((await api.get("/v1/conversations/fine")).json()["messages"]) == 2
