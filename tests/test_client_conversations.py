"""`matrix chat --conversation` and `matrix conversations`, run as real processes against a real relay and mock."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from clients import TIMEOUT, expected_text, free_port
from conftest import base_url
from mock_ai.script import Script

REPO = Path(__file__).resolve().parent.parent
ALICE, BOB = "tm-key-alice", "tm-key-bob"


async def matrix(command: str, *args: str, url: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Run `matrix COMMAND ARGS --url URL` (stdin fed and closed, if given); its exit status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "matrix", command, *args, "--url", url, cwd=REPO,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "MATRIX_API_KEY": ""})
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()


async def transcript(url: str, conversation: str, key: str | None = None) -> dict:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        response = await client.get(f"{url}/v1/conversations/{conversation}",
                                    headers={"Authorization": f"Bearer {key}"} if key else {})
    assert response.status_code == 200, response.text
    return response.json()


async def provider_heard(mock, tag: str) -> list[tuple[str, str]]:
    """The (role, text) pairs of the one provider request tagged `tag`, as the mock read them."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        [conn] = (await client.get(f"{base_url(mock)}/_mock/stats", params={"tag": tag})).json()["connections"]
    return [tuple(pair) for pair in conn["messages"]]


def turns(saved: dict) -> list[tuple[str, str]]:
    return [(m["role"], m["text"]) for m in saved["messages"]]


@pytest.mark.parametrize("down", ["sse", "ws"])
async def test_second_chat_sends_the_first_turn_as_history(relay, mock, down):
    """A second `matrix chat --conversation X` reaches the provider after the first turn; X keeps both turns."""
    url, conversation = base_url(relay), f"cli-{down}-{uuid.uuid4().hex[:8]}"
    first = "Remember the word lantern.\n#mock tokens=6 interval_ms=0"
    second = f"Which word did I ask you to remember?\n#mock tokens=4 interval_ms=0 tag={conversation}"
    code, out, err = await matrix("chat", first, "--conversation", conversation, "--downstream", down,
                                  "--upstream", "openai", url=url)
    assert code == 0, err
    assert expected_text(first) in out and "done/stop" in out
    code, out, err = await matrix("chat", second, "--conversation", conversation, "--downstream", down,
                                  "--upstream", "openai", url=url)
    assert code == 0, err
    assert expected_text(second) in out
    assert await provider_heard(mock, conversation) == [("user", first), ("assistant", expected_text(first)),
                                                        ("user", second)]
    saved = await transcript(url, conversation)
    assert turns(saved) == [("user", first), ("assistant", expected_text(first)),
                                                  ("user", second), ("assistant", expected_text(second))]
    assert [m.get("status") for m in saved["messages"]] == [None, "stop", None, "stop"]
    assert saved["messages"][1]["stream_id"] != saved["messages"][3]["stream_id"]


async def test_interactive_loop_keeps_one_conversation_until_quit(relay):
    """Without a prompt, each stdin line is a turn of one new conversation whose id is printed; `/quit` ends it."""
    url = base_url(relay)
    # A line ending in `\` continues: the script line is part of the same prompt.
    first, second = "Hello there \n#mock tokens=5 interval_ms=0", "And again\n#mock tokens=3 interval_ms=0"
    typed = "Hello there \\\n#mock tokens=5 interval_ms=0\n\nAnd again\\\n#mock tokens=3 interval_ms=0\n/quit\nnot sent\n"
    code, out, err = await matrix("chat", "--upstream", "spark", "--downstream", "ws", url=url, stdin=typed)
    assert code == 0, err
    [conversation] = re.findall(r"continue with: matrix chat --conversation ([0-9a-f]{32})\)", err)
    assert out.count("done/stop") == 2
    assert expected_text(first) in out and expected_text(second) in out
    saved = await transcript(url, conversation)
    assert turns(saved) == [("user", first), ("assistant", expected_text(first)),
                                                  ("user", second), ("assistant", expected_text(second))]


async def test_interactive_loop_continues_a_named_conversation_until_eof(relay):
    """`matrix chat --conversation X` without a prompt adds stdin's lines to X until EOF, and prints no new id."""
    url, conversation = base_url(relay), f"named-{uuid.uuid4().hex[:8]}"
    first = "One\n#mock tokens=2 interval_ms=0"
    code, _, err = await matrix("chat", first, "--conversation", conversation, url=url)
    assert code == 0, err
    code, out, err = await matrix("chat", "--conversation", conversation, url=url, stdin="Two\nThree\n")
    assert code == 0, err
    assert "continue with" not in err and out.count("done/") == 2
    saved = await transcript(url, conversation)
    assert [m["text"] for m in saved["messages"] if m["role"] == "user"] == [first, "Two", "Three"]
    assert len(saved["messages"]) == 6


async def test_interactive_loop_goes_on_after_a_failed_answer(relay):
    """A provider error mid-answer (not retryable) is printed with its code; the next line still continues it."""
    url, conversation = base_url(relay), f"fails-{uuid.uuid4().hex[:8]}"
    failing = "Break \\\n#mock tokens=6 interval_ms=0 fault=error_after:2\n"  # Spark: 10014, upstream_rejected
    code, out, err = await matrix("chat", "--conversation", conversation, "--upstream", "spark", url=url,
                                  stdin=failing + "Recover\n")
    assert code == 0, err  # the status of the last turn
    assert re.search(r"^error upstream_rejected: .+\(vendor code 10014\)$", err, re.M), err
    saved = await transcript(url, conversation)
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant", "user", "assistant"]
    assert [m.get("status") for m in saved["messages"]] == [None, "upstream_rejected", None, "stop"]
    shown = "".join(Script.parse(saved["messages"][0]["text"]).answer_tokens()[:2])
    assert saved["messages"][1]["text"] == shown and shown in out  # what was shown before the error is saved


@pytest.mark.parametrize("down", ["sse", "ws"])
async def test_a_refusal_prints_its_code_and_fails(relay, down):
    """A conversation id the relay refuses prints `error invalid_conversation_id` and exits non-zero."""
    code, out, err = await matrix("chat", "hi", "--conversation", "no/such id", "--downstream", down,
                                  url=base_url(relay))
    assert code == 1
    assert re.search(r"^error invalid_conversation_id: .+", err, re.M), err
    assert "-- error/invalid_conversation_id" in out


@pytest.mark.parametrize("down", ["sse", "ws"])
async def test_a_store_that_does_not_answer_is_retryable_and_the_loop_goes_on(make_relay, down):
    """With the store down each line is refused `store_unavailable` (503, retryable), and the loop reads the next."""
    dead = f"postgresql://matrix:secret@127.0.0.1:{free_port()}/matrix"  # nothing listens there
    url = base_url(await make_relay(store={"url": dead, "timeout_s": 0.5}))
    code, out, err = await matrix("chat", "--conversation", "later", "--downstream", down, url=url,
                                  stdin="first try\nsecond try\n")
    assert code == 1  # the last line failed
    assert out.count("-- error/store_unavailable") == 2, err
    suffix = r"\(HTTP 503, retryable\)$" if down == "sse" else r"\(retryable\)$"
    assert len(re.findall(r"^error store_unavailable: .+" + suffix, err, re.M)) == 2, err


@pytest.fixture
async def keyed_relay(aiohttp_server, mock, tmp_path):
    """A relay with two API keys: each key owns the conversations it starts."""
    from matrix.app import create_app
    from matrix.config import Settings
    from mock_ai import relay_upstreams
    settings = Settings(upstreams=relay_upstreams(f"127.0.0.1:{mock.port}"), auth={"keys": [ALICE, BOB]},
                        store={"url": f"sqlite:///{tmp_path}/keyed.db"})
    return base_url(await aiohttp_server(create_app(settings)))


@pytest.mark.parametrize("down", ["sse", "ws"])
async def test_another_keys_conversation_is_forbidden_and_ends_the_loop(keyed_relay, down):
    """Continuing another key's conversation prints `error forbidden` with HTTP 403, and the loop reads no further."""
    conversation = f"alices-{uuid.uuid4().hex[:8]}"
    code, _, err = await matrix("chat", "mine\n#mock tokens=2 interval_ms=0", "--conversation", conversation,
                                "--key", ALICE, url=keyed_relay)
    assert code == 0, err
    code, out, err = await matrix("chat", "--conversation", conversation, "--key", BOB, "--downstream", down,
                                  url=keyed_relay, stdin="let me in\nand again\n")
    assert code == 1
    # SSE: an HTTP refusal; WS: an `error` event without seq on the open socket.
    assert re.search(r"^error forbidden: .+" + (r"\(HTTP 403\)$" if down == "sse" else ""), err, re.M), err
    assert out.count("-- error/forbidden") == 1  # refused for good: the second line is never sent
    assert len((await transcript(keyed_relay, conversation, ALICE))["messages"]) == 2


async def test_conversations_lists_newest_first_and_prints_one(relay):
    """`matrix conversations` lists the caller's conversations newest first; with an id it prints the turns."""
    url = base_url(relay)
    older, newer = f"older-{uuid.uuid4().hex[:6]}", f"newer-{uuid.uuid4().hex[:6]}"
    owls, bats = "Tell me about owls\n#mock tokens=3 interval_ms=0", "Tell me about bats\n#mock tokens=3 interval_ms=0"
    for conversation, prompt in ((older, owls), (newer, bats)):
        code, _, err = await matrix("chat", prompt, "--conversation", conversation, url=url)
        assert code == 0, err
    code, out, err = await matrix("conversations", url=url)
    assert code == 0, err
    listed = [line.split()[0] for line in out.splitlines()]
    assert listed.index(newer) < listed.index(older)
    assert "Tell me about bats" in out.splitlines()[listed.index(newer)]  # the title: the first message's start
    code, out, err = await matrix("conversations", newer, url=url)
    assert code == 0, err
    assert "user: Tell me about bats" in out
    assert "\nassistant [stop, " in out and expected_text(bats) in out
    code, _, err = await matrix("conversations", f"missing-{uuid.uuid4().hex[:6]}", url=url)
    assert code == 1 and re.search(r"^error conversation_not_found: .+\(HTTP 404\)", err, re.M), err


@pytest.mark.parametrize("down", ["sse", "ws"])
async def test_a_wrong_key_prints_unauthorized(keyed_relay, down):
    """A key the relay does not know prints `error unauthorized` with HTTP 401 on both downstreams (WS: the upgrade)."""
    code, _, err = await matrix("chat", "hi", "--key", "tm-key-wrong", "--downstream", down, url=keyed_relay)
    assert code == 1
    assert re.search(r"^error unauthorized: .+\(HTTP 401\)$", err, re.M), err
