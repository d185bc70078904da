"""The demo page in a real browser: Debian's Chromium, driven by Playwright, against a real relay and mock.

Playwright's async API runs in the test's event loop, the same loop that serves the relay
and the mock (pytest-aiohttp), so nothing here is mocked: the page streams over real
sockets and the mock's `/_mock/stats` tells what reached the provider. Playwright never
downloads a browser here; `make test` installs Debian's `chromium` package.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from pathlib import Path

import httpx
import pytest

from clients import TIMEOUT, expected_text
from conftest import base_url
from mock_ai.script import Script
from test_nginx import NGINX, nginx_in_front

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = os.environ.get("MATRIX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"
WAIT_MS = TIMEOUT * 1000  # every browser wait is bounded too

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason=f"{CHROMIUM} missing: `make test` installs Debian's chromium package")

# (combination, the page's client transport, upstream): every combination, and the
# native EventSource on both upstream transports.
CASES = [("sse-sse", "fetch", "openai"), ("sse-ws", "fetch", "spark"),
         ("ws-sse", "ws", "baidu"), ("ws-ws", "ws", "spark"),
         ("sse-sse", "eventsource", "baidu"), ("sse-ws", "eventsource", "spark")]
CLIENTS = ["fetch", "eventsource", "ws"]
ENDED = "['done', 'error', 'stopped'].includes(document.querySelector('[data-lane=\"%d\"]').dataset.state)"


@pytest.fixture
async def browser():
    async with playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                                            timeout=WAIT_MS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser):
    """A fresh page; a JavaScript exception in it fails the test."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    await context.close()
    assert not errors, errors


async def open_demo(page, relay) -> None:
    await page.goto(base_url(relay) + "/")
    await page.wait_for_function("!document.querySelector('#start').disabled")


async def run(page, prompt: str, client: str, upstream: str, *, lane: int = 0, trace: bool = False) -> None:
    """Pick the lane's transports, type the prompt and press Start."""
    row = page.locator(f'[data-lane="{lane}"]')
    await row.locator("select.downstream").select_option(client)
    await row.locator("select.upstream").select_option(upstream)
    await page.fill("#prompt", prompt)
    if trace:
        await page.check("#trace")
    await page.click("#start")


async def ended(page, lane: int = 0) -> str:
    """Wait for the lane's stream to end; its state: done, error or stopped."""
    await page.wait_for_function(ENDED % lane)
    return await page.get_attribute(f'[data-lane="{lane}"]', "data-state")


async def answer(page, lane: int = 0) -> str:
    return await page.locator(f'[data-lane="{lane}"] .answer .text').text_content()


async def deltas_seen(page, count: int, lane: int = 0) -> None:
    await page.wait_for_function(
        f"document.querySelectorAll('[data-lane=\"{lane}\"] .entry[data-type=delta]').length >= {count}")


async def provider_connections(mock, tag: str, *, ended: bool) -> list[dict]:
    """The mock's record of the tagged provider connections, once all have ended (if asked)."""
    async with httpx.AsyncClient() as client, asyncio.timeout(TIMEOUT):
        while True:
            stats = (await client.get(f"{base_url(mock)}/_mock/stats", params={"tag": tag})).json()
            conns = stats["connections"]
            if conns and (not ended or all(c["outcome"] != "open" for c in conns)):
                return conns
            await asyncio.sleep(0.02)


async def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("combo,client,upstream", CASES, ids=[f"{c}-{d}-{u}" for c, d, u in CASES])
async def test_each_combination_renders_the_full_answer(relay, page, combo, client, upstream):
    """The page renders the provider's whole answer, and logs both hops, on every combination."""
    prompt = "Why stream answers?\n#mock tokens=24 interval_ms=5"
    await open_demo(page, relay)
    await run(page, prompt, client, upstream, trace=True)
    assert await ended(page) == "done"
    lane = page.locator('[data-lane="0"]')
    assert await answer(page) == expected_text(prompt)
    assert await lane.locator(".combo").text_content() == combo
    assert (await lane.locator(".seqcheck").text_content()).startswith("✓")
    assert re.fullmatch(r"[\d.]+ ms", await lane.locator(".ttft").text_content())
    assert int(await lane.locator(".chars").text_content()) == len(expected_text(prompt))
    assert await lane.locator(".entry.prov-out").count() >= 1  # the request the relay sent
    assert await lane.locator(".entry.prov-in").count() >= 1   # the provider's frames
    assert await lane.locator(".entry.down[data-type=delta]").count() >= 1
    assert await lane.locator(".entry.down[data-type=done]").count() == 1
    await screenshot(page, f"finished-{combo}-{client}-{upstream}")


@pytest.mark.parametrize("client", CLIENTS)
async def test_stop_ends_the_stream_and_closes_the_provider_connection(relay, mock, page, client):
    """Stop ends the stream as done/cancelled, and the provider connection ends client_closed."""
    tag = uuid.uuid4().hex[:10]
    await open_demo(page, relay)
    await run(page, f"Stop me\n#mock tokens=400 interval_ms=20 tag={tag}", client, "openai")
    await deltas_seen(page, 3)
    await page.click("#stop")
    assert await ended(page) == "stopped"
    assert await page.get_attribute('[data-lane="0"]', "data-reason") == "cancelled"
    [conn] = await provider_connections(mock, tag, ended=True)
    assert conn["outcome"] == "client_closed" and conn["tokens_sent"] < 400


@pytest.mark.parametrize("client", CLIENTS)
async def test_drop_and_resume_shows_the_complete_text_exactly_once(make_relay, mock, page, client):
    """After the page cuts its connection mid-stream and resumes, the answer is whole, nothing twice."""
    relay = await make_relay(disconnect_grace_s=5)
    tag = uuid.uuid4().hex[:10]
    prompt = f"Drop me\n#mock tokens=30 interval_ms=25 tag={tag}"
    await open_demo(page, relay)
    await page.fill("#gap", "300")
    await run(page, prompt, client, "spark")
    await deltas_seen(page, 5)
    await page.click("#drop")
    assert await ended(page) == "done"
    assert await answer(page) == expected_text(prompt)
    lane = page.locator('[data-lane="0"]')
    note = await lane.locator(".entry.note.resumed").text_content()
    after, following = map(int, re.search(r"resumed after seq (\d+), next seq (\d+) ✓", note).groups())
    assert following == after + 1
    assert (await lane.locator(".seqcheck").text_content()).startswith("✓")
    [conn] = await provider_connections(mock, tag, ended=True)  # one provider connection, never restarted
    assert conn["outcome"] == "completed"
    await screenshot(page, f"drop-and-resume-{client}")


@pytest.mark.parametrize("upstream", ["spark", "openai"])
async def test_error_fault_shows_the_error_in_the_page(relay, page, upstream):
    """The error-mid-stream button scripts a provider error; the page shows the text so far and the error."""
    await open_demo(page, relay)
    await page.fill("#prompt", "Fail me\n#mock tokens=20 interval_ms=5")
    await page.click("button.fault[data-value='error_after:8']")
    prompt = await page.input_value("#prompt")
    assert "fault=error_after:8" in prompt
    await run(page, prompt, "ws", upstream)
    assert await ended(page) == "error"
    assert await answer(page) == "".join(Script.parse(prompt).answer_tokens()[:8])
    outcome = await page.locator('[data-lane="0"] .outcome').text_content()
    assert re.search(r"upstream_(rejected|unavailable)", outcome) and "vendor code" in outcome
    assert await page.locator('[data-lane="0"] .entry.down[data-type=error]').count() == 1


async def test_fetch_sse_shows_heartbeats(make_relay, page):
    """While the provider is silent, fetch-SSE's wire log shows the relay's `: ping` comments."""
    relay = await make_relay(heartbeat_s=0.2)
    prompt = "Wait for it\n#mock tokens=3 interval_ms=5 first_token_ms=1200"
    await open_demo(page, relay)
    await run(page, prompt, "fetch", "openai")
    assert await ended(page) == "done"
    assert await answer(page) == expected_text(prompt)
    beats = page.locator('[data-lane="0"] .entry.beat .raw')
    assert await beats.count() >= 2 and await beats.first.text_content() == ": ping"
    assert int(await page.locator('[data-lane="0"] .beats').text_content()) == await beats.count()


async def test_side_by_side_races_two_combinations(relay, page):
    """Side by side, one prompt runs through two combinations at once and both answers are whole."""
    prompt = "Race me\n#mock tokens=40 interval_ms=10"
    await open_demo(page, relay)
    await page.check("#race")
    await page.locator('[data-lane="1"] select.downstream').select_option("fetch")
    await page.locator('[data-lane="1"] select.upstream').select_option("openai")
    await run(page, prompt, "ws", "spark", lane=0, trace=True)
    assert await ended(page, 0) == "done" and await ended(page, 1) == "done"
    assert await answer(page, 0) == await answer(page, 1) == expected_text(prompt)
    combos = [await page.locator(f'[data-lane="{i}"] .combo').text_content() for i in (0, 1)]
    assert combos == ["ws-ws", "sse-sse"]
    assert "first token" in await page.locator("#race-result").text_content()
    await screenshot(page, "race")


async def test_page_streams_through_nginx(relay, page, tmp_path):
    """Served through deploy/nginx.conf, the page streams whole answers on each client transport."""
    if NGINX is None:
        pytest.skip("nginx is not installed")
    prompt = "Through the proxy\n#mock tokens=12 interval_ms=5"
    async with nginx_in_front(relay, tmp_path) as base:
        await page.goto(base + "/")
        await page.wait_for_function("!document.querySelector('#start').disabled")
        for client in CLIENTS:
            await run(page, prompt, client, "spark")
            assert await ended(page) == "done", await page.locator('[data-lane="0"] .outcome').text_content()
            assert await answer(page) == expected_text(prompt)


async def saved_turns(page, lane: int, count: int) -> list[tuple[str, str]]:
    """Once the lane shows `count` saved turns (none pending): their (role, text)."""
    turns = f'[data-lane="{lane}"] .turns .turn:not(.pending)'
    await page.wait_for_function(f"document.querySelectorAll('{turns}').length === {count}")
    return [(await t.locator(".who").text_content(), await t.locator(".turn-text").text_content())
            for t in await page.locator(turns).all()]


async def relay_transcript(relay, conversation: str) -> list[tuple[str, str]]:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(f"{base_url(relay)}/v1/conversations/{conversation}")
    assert response.status_code == 200, response.text
    return [(m["role"], m["text"]) for m in response.json()["messages"]]


@pytest.mark.parametrize("client", CLIENTS)
async def test_conversation_continues_across_starts_in_a_lane(relay, mock, page, client):
    """With the conversation on, a lane's second Start continues it: the provider hears the first turn, both show."""
    tag = uuid.uuid4().hex[:10]
    first = "My name is Ada.\n#mock tokens=6 interval_ms=5"
    second = f"What is my name?\n#mock tokens=5 interval_ms=5 tag={tag}"
    await open_demo(page, relay)
    await page.check("#conversation")
    await run(page, first, client, "openai")
    assert await ended(page) == "done"
    assert await saved_turns(page, 0, 2) == [("you", first), ("assistant", expected_text(first))]
    await run(page, second, client, "openai")
    assert await ended(page) == "done"
    assert await answer(page) == expected_text(second)
    both = [("user", first), ("assistant", expected_text(first)), ("user", second), ("assistant", expected_text(second))]
    assert await saved_turns(page, 0, 4) == [("you" if r == "user" else r, t) for r, t in both]
    conversation = await page.get_attribute('[data-lane="0"]', "data-conversation")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", conversation)  # randomUUID
    assert await relay_transcript(relay, conversation) == both
    [conn] = await provider_connections(mock, tag, ended=True)
    assert [tuple(m) for m in conn["messages"]] == both[:3]  # the page sent one message; the relay added two
    lane = page.locator('[data-lane="0"]')
    assert await lane.locator(".turn .check.ok").text_content() == "✓ saved exactly as streamed"
    await screenshot(page, f"conversation-{client}")


async def test_new_conversation_and_picking_an_earlier_one(relay, page):
    """New conversation starts afresh; picking the earlier one from the list continues it."""
    one, two, three = ("Owls?\n#mock tokens=3 interval_ms=1", "Bats?\n#mock tokens=3 interval_ms=1",
                       "More owls?\n#mock tokens=3 interval_ms=1")
    await open_demo(page, relay)
    await page.check("#conversation")
    await run(page, one, "fetch", "spark")
    assert await ended(page) == "done"
    await saved_turns(page, 0, 2)
    earlier = await page.get_attribute('[data-lane="0"]', "data-conversation")
    await page.click('[data-lane="0"] .new-conversation')
    assert await page.locator('[data-lane="0"] .turns .turn').count() == 0
    await run(page, two, "fetch", "spark")
    assert await ended(page) == "done"
    assert await saved_turns(page, 0, 2) == [("you", two), ("assistant", expected_text(two))]
    newer = await page.get_attribute('[data-lane="0"]', "data-conversation")
    assert newer != earlier
    picker = page.locator('[data-lane="0"] select.conversation-pick')
    await page.wait_for_function(  # the list (GET /v1/conversations) has both, newest first
        f"[...document.querySelectorAll('[data-lane=\"0\"] .conversation-pick option')].map(o => o.value).join()"
        f" === '{newer},{earlier}'")
    await picker.select_option(earlier)
    assert await saved_turns(page, 0, 2) == [("you", one), ("assistant", expected_text(one))]
    await run(page, three, "fetch", "spark")
    assert await ended(page) == "done"
    await saved_turns(page, 0, 4)
    texts = [t for _, t in await relay_transcript(relay, earlier)]
    assert texts == [one, expected_text(one), three, expected_text(three)]
    assert len(await relay_transcript(relay, newer)) == 2


async def test_a_stopped_answer_is_saved_as_cancelled_with_the_text_shown(relay, page):
    """Stopping a conversation's answer leaves it in the turns as `cancelled`, with exactly the text the page showed."""
    await open_demo(page, relay)
    await page.check("#conversation")
    await run(page, "Stop me\n#mock tokens=400 interval_ms=20", "ws", "openai")
    await deltas_seen(page, 3)
    await page.click("#stop")
    assert await ended(page) == "stopped"
    [(_, _), (who, text)] = await saved_turns(page, 0, 2)
    assert who == "assistant" and text == await answer(page) and text
    turn = page.locator('[data-lane="0"] .turn.assistant')
    assert await turn.locator(".ending").text_content() == "cancelled"
    assert await turn.locator(".check.ok").count() == 1
