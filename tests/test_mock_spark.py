"""The Spark mock, spoken to by the `websockets` client over URLs signed by `upstreams.spark_auth`."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime, timezone
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import urlencode, urlsplit

import pytest
import websockets
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from conftest_mock import WAIT, http_client, mock_url, spark_request, spark_url, start_mock  # noqa: F401
from mock_ai import Script
from mock_ai.spark import DOMAINS
from mock_ai.spark_auth import SignatureError, verify
from upstreams.spark_auth import signature


def connect(url: str) -> websockets.asyncio.client.connect:
    return websockets.connect(url, open_timeout=WAIT, close_timeout=WAIT)


async def exchange(url: str, request: str) -> tuple[list[dict], int | None]:
    """Send one request frame; return every frame received and the close code the server sent."""
    async with asyncio.timeout(WAIT):
        async with connect(url) as ws:
            await ws.send(request)
            frames = [json.loads(message) async for message in ws]
            return frames, ws.close_code


def text_of(frames: list[dict]) -> str:
    return "".join(f["payload"]["choices"]["text"][0]["content"] for f in frames if "payload" in f)


async def refused(url: str) -> tuple[int, dict]:
    with pytest.raises(InvalidStatus) as caught:
        async with asyncio.timeout(WAIT):
            async with connect(url):
                pass
    return caught.value.response.status_code, json.loads(caught.value.response.body)


@pytest.mark.parametrize("path, domain", DOMAINS.items())
async def test_an_exchange_streams_status_0_1_2_then_closes_1000(mock_url: str, path: str, domain: str) -> None:
    """Every version path answers its domain: seq counts up, usage rides the last frame only, then close 1000."""
    text = "你好\n#mock tokens=4 interval_ms=0"
    frames, close_code = await exchange(spark_url(mock_url, path), spark_request(text, domain))
    assert [f["header"]["status"] for f in frames] == [0, 1, 1, 2]
    assert [f["payload"]["choices"]["status"] for f in frames] == [0, 1, 1, 2]
    assert [f["payload"]["choices"]["seq"] for f in frames] == [0, 1, 2, 3]
    assert all(f["header"]["code"] == 0 and f["header"]["sid"] == frames[0]["header"]["sid"] for f in frames)
    assert ["usage" in f["payload"] for f in frames] == [False, False, False, True]
    usage = frames[-1]["payload"]["usage"]["text"]
    assert usage["completion_tokens"] == 4 and usage["total_tokens"] == usage["prompt_tokens"] + 4
    assert set(usage) == {"question_tokens", "prompt_tokens", "completion_tokens", "total_tokens"}
    assert text_of(frames) == Script.parse(text).answer_text()
    assert close_code == 1000


async def test_a_one_token_answer_is_a_single_status_2_frame(mock_url: str) -> None:
    """The only frame of a one-token answer is also the last: status 2 with usage."""
    frames, _ = await exchange(spark_url(mock_url), spark_request("hi\n#mock tokens=1"))
    assert [(f["header"]["status"], "usage" in f["payload"]) for f in frames] == [(2, True)]


async def test_a_wrong_secret_is_refused_with_401_and_the_vendor_body(mock_url: str) -> None:
    """A URL signed with the wrong secret is refused before the upgrade: HTTP 401 and the gateway's JSON."""
    status, body = await refused(spark_url(mock_url, secret="not-the-secret"))
    assert status == 401
    assert body == {"message": "HMAC signature cannot be verified: HMAC signature does not match"}


async def test_a_stale_date_is_refused(mock_url: str) -> None:
    """A date more than 300 s old fails the handshake with the vendor's skew message."""
    stale = formatdate(datetime.now(timezone.utc).timestamp() - 301, usegmt=True)
    status, body = await refused(spark_url(mock_url, date=stale))
    assert status == 401 and "a valid date or x-date header is required" in body["message"]


async def test_the_hmac_username_spelling_with_a_utc_date_is_accepted(mock_url: str) -> None:
    """The one-api style origin (`hmac username=`, Go's `UTC` date) signs as well as `api_key=`."""
    date = formatdate(usegmt=True).replace("GMT", "UTC")
    url = mock_url.replace("http://", "ws://") + "/v3.5/chat"
    host = urlsplit(url).netloc
    origin = (f'hmac username="mock-key", algorithm="hmac-sha256", headers="host date request-line", '
              f'signature="{signature("mock-secret", host, date, "/v3.5/chat")}"')
    query = urlencode({"host": host, "date": date, "authorization": base64.b64encode(origin.encode()).decode()})
    frames, close_code = await exchange(f"{url}?{query}", spark_request("hi\n#mock tokens=2 interval_ms=0"))
    assert [f["header"]["code"] for f in frames] == [0, 0] and close_code == 1000


def test_the_vendor_doc_vector_verifies() -> None:
    """The mock's own verifier accepts the vendor documentation's worked example and rejects a changed path."""
    auth = ("YXBpX2tleT0iYWRkZDIyNzJiNmQ4YjdjOGFiZGQ3OTUzMTQyMGNhM2IiLCBhbGdvcml0aG09ImhtYWMtc2hh"
            "MjU2IiwgaGVhZGVycz0iaG9zdCBkYXRlIHJlcXVlc3QtbGluZSIsIHNpZ25hdHVyZT0iejVnSGR1M3B4VlY0QURN"
            "eWs0Njd3T1dEUTlxNkJRelIzbmZNVGpjL0RhUT0i")
    query = f"authorization={auth}&date=Fri%2C+05+May+2023+10%3A43%3A39+GMT&host=spark-api.xf-yun.com"
    keys = {"addd2272b6d8b7c8abdd79531420ca3b": "MjlmNzkzNmZkMDQ2OTc0ZDdmNGE2ZTZi"}
    now = parsedate_to_datetime("Fri, 05 May 2023 10:45:00 GMT")
    assert verify(query, "spark-api.xf-yun.com", "/v1.1/chat", keys, now) == "addd2272b6d8b7c8abdd79531420ca3b"
    with pytest.raises(SignatureError, match="does not match"):
        verify(query, "spark-api.xf-yun.com", "/v3.5/chat", keys, now)


async def test_a_domain_that_does_not_match_the_path_gets_10404(mock_url: str) -> None:
    """Asking /v3.5/chat for domain `lite` gets an error frame with code 10404, then close."""
    frames, _ = await exchange(spark_url(mock_url, "/v3.5/chat"), spark_request("hi", "lite"))
    assert [f["header"]["code"] for f in frames] == [10404] and "payload" not in frames[0]


async def test_a_wrong_app_id_gets_an_error_frame(mock_url: str) -> None:
    """A request frame whose app_id is not the key's gets a non-zero code and no text."""
    frames, _ = await exchange(spark_url(mock_url), spark_request("hi", app_id="someone-else"))
    assert [f["header"]["code"] for f in frames] == [11200]


@pytest.mark.parametrize("fault, code, tokens", [("error_before", 10013, 0), ("error_after:2", 10014, 2),
                                                 ("http_429", 11202, 0), ("handshake_401", 11200, 0)])
async def test_scripted_errors_are_frames_with_a_nonzero_code(mock_url: str, fault: str, code: int,
                                                              tokens: int) -> None:
    """error_before/after (and handshake faults named in the frame) send N text frames, then the vendor code."""
    text = f"hi\n#mock tokens=5 interval_ms=0 fault={fault}"
    frames, close_code = await exchange(spark_url(mock_url), spark_request(text))
    assert [f["header"]["code"] for f in frames] == [0] * tokens + [code]
    assert [f["header"]["status"] for f in frames[:tokens]] == [0, 1][:tokens]  # no frame claimed to be last
    assert text_of(frames) == "".join(Script.parse(text).answer_tokens()[:tokens])
    assert close_code == 1000


async def test_drop_after_closes_without_a_close_frame(mock_url: str) -> None:
    """drop_after:N sends N frames then drops TCP: the client sees 1006 (abnormal closure)."""
    received = []
    async with asyncio.timeout(WAIT):
        async with connect(spark_url(mock_url)) as ws:
            await ws.send(spark_request("hi\n#mock tokens=5 interval_ms=0 fault=drop_after:3"))
            with pytest.raises(ConnectionClosedError) as caught:
                async for message in ws:
                    received.append(json.loads(message))
    assert len(received) == 3 and caught.value.rcvd is None and ws.close_code == 1006


async def test_malformed_after_sends_a_frame_that_is_not_json(mock_url: str) -> None:
    """malformed_after:N follows N good frames with text that does not parse."""
    async with asyncio.timeout(WAIT):
        async with connect(spark_url(mock_url)) as ws:
            await ws.send(spark_request("hi\n#mock tokens=5 interval_ms=0 fault=malformed_after:1"))
            messages = [message async for message in ws]
    assert len(messages) == 2 and json.loads(messages[0])["header"]["code"] == 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(messages[1])


async def test_a_second_request_in_flight_gets_10007(mock_url: str) -> None:
    """Sending another request while the answer streams gets an error frame with code 10007."""
    async with asyncio.timeout(WAIT):
        async with connect(spark_url(mock_url)) as ws:
            await ws.send(spark_request("hi\n#mock tokens=5 interval_ms=50"))
            first = json.loads(await ws.recv())
            await ws.send(spark_request("again"))
            rest = [json.loads(message) async for message in ws]
    assert first["header"]["code"] == 0 and rest[-1]["header"]["code"] == 10007


async def test_armed_handshake_faults_refuse_the_next_upgrades(mock_url: str) -> None:
    """POST /_mock/arm with fault=http_503 fail_times=2 refuses the next two upgrades with 503, then serves."""
    async with http_client(mock_url) as http:
        armed = await http.post("/_mock/arm", json={"directive": "fault=http_503 fail_times=2 tag=armed"})
    assert armed.status_code == 200 and armed.json()["armed"]["remaining"] == 2
    for _ in range(2):
        status, body = await refused(spark_url(mock_url))
        assert status == 503 and body["message"]
    frames, _ = await exchange(spark_url(mock_url), spark_request("hi\n#mock tokens=1"))
    assert frames[0]["header"]["code"] == 0


@pytest.mark.parametrize("fault, status", [("handshake_401", 401), ("http_429", 429)])
async def test_handshake_faults_from_defaults_refuse_the_upgrade(start_mock, fault: str,  # noqa: F811
                                                                  status: int) -> None:
    """A handshake fault among the app's defaults refuses upgrades with its status and a JSON message."""
    base = await start_mock(defaults={"fault": fault})
    assert (await refused(spark_url(base)))[0] == status


async def test_a_silent_client_is_dropped_after_the_first_frame_timeout(start_mock) -> None:  # noqa: F811
    """A client that sends no request within the timeout (the vendor's 60 s) is closed by the server."""
    base = await start_mock(first_frame_timeout_s=0.1)
    async with asyncio.timeout(WAIT):
        async with connect(spark_url(base)) as ws:
            await ws.wait_closed()
    assert ws.close_code == 1000


async def test_a_bad_directive_gets_10005(mock_url: str) -> None:
    """An unknown directive key is an invalid-parameter error frame."""
    frames, _ = await exchange(spark_url(mock_url), spark_request("hi\n#mock speed=11"))
    assert [f["header"]["code"] for f in frames] == [10005]


async def test_max_tokens_cuts_the_answer(mock_url: str) -> None:
    """parameter.chat.max_tokens below the script's length cuts the answer, still ending with status 2."""
    request = json.loads(spark_request("hi\n#mock tokens=6 interval_ms=0"))
    request["parameter"]["chat"]["max_tokens"] = 2
    frames, _ = await exchange(spark_url(mock_url), json.dumps(request))
    assert [f["header"]["status"] for f in frames] == [0, 2]
    assert text_of(frames) == "".join(Script.parse("hi").answer_tokens()[:2])
