"""Secret hygiene: a run with known secrets, every output captured and searched for them.

Every provider credential and the client API key come from the environment through
"${ENV}" references. The run streams through every endpoint and upstream, including
refused handshakes, wrong keys, dead and misconfigured providers and mid-stream faults;
the relay's logs (every logger at DEBUG), HTTP responses, SSE bytes, WS frames, trace
events, the settings' repr/str/JSON, config errors and the `matrix serve` CLI's
stdout/stderr are then searched for the secrets and for the Spark signed URL's query.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import signal
import socket
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import trustme
import websockets
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from clients import TIMEOUT, chat_body
from matrix.app import create_app, start_site
from matrix.config import load
from matrix.errors import ConfigError
from matrix.logs import JSONFormatter
from mock_ai.app import create_app as create_mock

ASYNC = pytest.mark.asyncio(loop_scope="module")  # the tests share the run, on one event loop

REPO = Path(__file__).resolve().parent.parent
SECRETS = {  # environment variable -> a value unique to this run, 32 random hex digits at its end
    name: f"sk-SECRET-{name.lower().replace('_', '-')}-{secrets.token_hex(16)}"
    for name in ("TM_SPARK_API_KEY", "TM_SPARK_API_SECRET", "TM_SPARK_WRONG_SECRET", "TM_BAIDU_SECRET_KEY",
                 "TM_BAIDU_WRONG_SECRET", "TM_OPENAI_API_KEY", "TM_OPENAI_WRONG_KEY", "TM_AUTH_KEY",
                 "TM_PROXY_PASSWORD", "TM_PROXY_WRONG_PASSWORD", "TM_CLIENT_KEY_PASSWORD",
                 "TM_AUTH_KEY_OLD", "TM_AUTH_KEY_NEW")
}
PRESENTED = f"sk-SECRET-presented-by-a-stranger-{secrets.token_hex(16)}"  # a wrong key a client sends
PROXY_USER = "relay-user"
# A client certificate whose key is stored encrypted with TM_CLIENT_KEY_PASSWORD: its key material is a secret too.
CLIENT_CA = trustme.CA()
CLIENT_LEAF = CLIENT_CA.issue_cert("relay@example.test")
_KEY = serialization.load_pem_private_key(CLIENT_LEAF.private_key_pem.bytes(), None)
CLIENT_KEY_PEMS = {  # how the key may show up: as stored (encrypted), and in the clear in any of two encodings
    "stored": _KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.BestAvailableEncryption(SECRETS["TM_CLIENT_KEY_PASSWORD"].encode())),
    "clear": CLIENT_LEAF.private_key_pem.bytes(),
    "clear-pkcs8": _KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())}
AUTH = {"Authorization": f"Bearer {SECRETS['TM_AUTH_KEY']}"}


def _b64_prefix(text: str) -> str:
    """The base64 of the longest 3-byte-aligned prefix of `text`: a prefix of the base64 of anything starting so."""
    raw = text.encode()
    return base64.b64encode(raw[:len(raw) // 3 * 3]).decode()


def _needles() -> dict[str, str]:
    """What must never appear -> what it gives away. Any 8 of a secret's random hex digits count: a
    truncated repr ('sk-SEC...5dab') still leaks part of a key. Also the Spark signed URL's query (its
    `authorization` is base64 of a text naming the api_key and the signature), Baidu's `secretKey=`
    query parameter, and a bearer token of ours."""
    needles = {}
    for name, value in {**SECRETS, "PRESENTED": PRESENTED}.items():
        tail = value[-32:]
        needles.update({tail[i:i + 8]: f"part of {name}" for i in range(len(tail) - 7)})
        needles[value] = name
    for form, pem in CLIENT_KEY_PEMS.items():  # a 24-character piece of every full base64 line of the key
        lines = [line for line in pem.decode().splitlines() if len(line) == 64]
        needles.update({line[20:44]: f"client key material ({form})" for line in lines})
    for name in ("TM_PROXY_PASSWORD", "TM_PROXY_WRONG_PASSWORD"):  # Proxy-Authorization: Basic base64(user:pw)
        needles[base64.b64encode(f"{PROXY_USER}:{SECRETS[name]}".encode()).decode()] = f"{name} as Basic"
    spark_auth = _b64_prefix(f'api_key="{SECRETS["TM_SPARK_API_KEY"]}", algorithm="hmac-sha256"')
    needles.update({"authorization=": "a signed URL's query", "signature=": "a signature", 'signature="': "a signature",
                    spark_auth[:40]: "a Spark authorization value", "secretKey=": "Baidu's secretKey parameter",
                    "Bearer sk-": "a bearer key"})
    return needles


NEEDLES = _needles()


def leaks(text: str) -> list[str]:
    """What `text` gives away, by name ([] when it is clean)."""
    lowered = text.lower()
    return sorted({what for needle, what in NEEDLES.items() if needle.lower() in lowered})


def leaks_by_source(outputs: dict[str, list[str]]) -> dict[str, list[str]]:
    found = {source: sorted({n for text in texts for n in leaks(text)}) for source, texts in outputs.items()}
    return {source: needles for source, needles in found.items() if needles}


def evidence(outputs: dict[str, list[str]]) -> str:
    """The first leaking text of each source, cut around the first needle, for the failure message."""
    shown = []
    for source, texts in outputs.items():
        for text in texts:
            hits = [text.lower().find(n.lower()) for n in NEEDLES if n.lower() in text.lower()]
            if hits:
                at = min(hits)
                shown.append(f"{source}: ...{text[max(0, at - 160):at + 60]!r}...")
                break
    return "\n".join(shown)


def assert_clean(outputs: dict[str, list[str]]) -> None:
    assert leaks_by_source(outputs) == {}, evidence(outputs)


def test_the_search_finds_what_it_looks_for():
    """The search flags each secret, a signed Spark URL and a Baidu URL: a clean result means something."""
    from upstreams.spark_auth import signed_url
    url = signed_url("wss://spark.example/v3.5/chat", SECRETS["TM_SPARK_API_KEY"], SECRETS["TM_SPARK_API_SECRET"])
    for name, value in SECRETS.items():
        assert name in leaks(f"x {value} y")
        assert leaks(f"{{'api_key': '{value[:5]}...{value[-12:]}'}}") == [f"part of {name}"]  # a truncated repr
    assert "a signed URL's query" in leaks(url)
    assert leaks(url.split("authorization=")[1].split("&")[0]) == ["a Spark authorization value"]  # the value alone
    assert leaks("POST http://agent/assistant/conversation?appId=a&secretKey=s") == ["Baidu's secretKey parameter"]
    assert leaks("HMAC signature cannot be verified: fail to retrieve credential") == []
    for form, pem in CLIENT_KEY_PEMS.items():
        assert f"client key material ({form})" in leaks(pem.decode())
    basic = base64.b64encode(f"{PROXY_USER}:{SECRETS['TM_PROXY_PASSWORD']}".encode()).decode()
    assert leaks(f"Proxy-Authorization: Basic {basic}") == ["TM_PROXY_PASSWORD as Basic"]


# -- the run ----------------------------------------------------------------------------------

def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_toml(mock: str, dead: str, unusable: bool) -> str:
    """Every upstream credential and the API key as ${ENV} references; wrong and dead twins, and with
    `unusable` Spark URLs the WS client cannot use (its errors quote the URL) where the config allows them."""
    spark = 'kind = "spark"\ndomain = "generalv3.5"\napp_id = "mock-app"\napi_key = "${TM_SPARK_API_KEY}"\n'
    unusable_sparks = f"""
[upstreams.spark-no-host]
{spark}url = "ws:///v3.5/chat"
api_secret = "${{TM_SPARK_API_SECRET}}"

[upstreams.spark-bad-port]
{spark}url = "ws://127.0.0.1:99999/v3.5/chat"
api_secret = "${{TM_SPARK_API_SECRET}}"
""" if unusable else ""
    baidu = 'kind = "baidu-agent"\napp_id = "mock-agent"\n'
    openai = 'kind = "openai"\nmodel = "qwen-plus"\n'
    return f"""
[server]
default_upstream = "openai"

[stream]
disconnect_grace_s = 0
retry_attempts = 1
upstream_idle_timeout_s = 2
upstream_connect_timeout_s = 2
replay_ttl_s = 30

[auth]
keys = ["${{TM_AUTH_KEY}}"]
clients.rotating = ["${{TM_AUTH_KEY_NEW}}", "${{TM_AUTH_KEY_OLD}}"]

[log]
level = "debug"

[upstreams.spark]
{spark}url = "ws://{mock}/v3.5/chat"
api_secret = "${{TM_SPARK_API_SECRET}}"

[upstreams.spark-wrong]
{spark}url = "ws://{mock}/v3.5/chat"
api_secret = "${{TM_SPARK_WRONG_SECRET}}"

{unusable_sparks}
[upstreams.spark-dead]
{spark}url = "ws://{dead}/v3.5/chat"
api_secret = "${{TM_SPARK_API_SECRET}}"

[upstreams.baidu]
{baidu}url = "http://{mock}/assistant/conversation"
secret_key = "${{TM_BAIDU_SECRET_KEY}}"

[upstreams.baidu-wrong]
{baidu}url = "http://{mock}/assistant/conversation"
secret_key = "${{TM_BAIDU_WRONG_SECRET}}"

[upstreams.baidu-dead]
{baidu}url = "http://{dead}/assistant/conversation"
secret_key = "${{TM_BAIDU_SECRET_KEY}}"

[upstreams.openai]
{openai}url = "http://{mock}/v1/chat/completions"
api_key = "${{TM_OPENAI_API_KEY}}"

[upstreams.openai-wrong]
{openai}url = "http://{mock}/v1/chat/completions"
api_key = "${{TM_OPENAI_WRONG_KEY}}"

[upstreams.openai-dead]
{openai}url = "http://{dead}/v1/chat/completions"
api_key = "${{TM_OPENAI_API_KEY}}"
"""


# upstream, #mock directive, how the stream must end (None: an error, any code)
STREAMS = [
    ("spark", "", "done stop"), ("baidu", "", "done stop"), ("openai", "", "done stop"),
    ("spark-wrong", "", "error upstream_rejected"), ("baidu-wrong", "", "error upstream_rejected"),
    ("openai-wrong", "", "error upstream_rejected"),
    ("spark-dead", "", "error upstream_unavailable"), ("baidu-dead", "", "error upstream_unavailable"),
    ("openai-dead", "", "error upstream_unavailable"), ("spark-no-host", "", None), ("spark-bad-port", "", None),
    ("spark", "fault=error_after:2", "error upstream_rejected"),
    ("baidu", "fault=drop_after:1", "error upstream_protocol"),
    ("openai", "fault=malformed_after:1", "error upstream_protocol"),
]


class Capture(logging.Handler):
    """Every record of the relay's process at DEBUG, formatted as the relay's JSON log lines; this test's own
    clients and providers apart (`client_lines`: they prove that the capture sees DEBUG records)."""

    CLIENTS = ("httpx", "httpcore", "test.")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JSONFormatter())
        self.lines: dict[str, list[str]] = defaultdict(list)
        self.client_lines: dict[str, list[str]] = defaultdict(list)

    def emit(self, record: logging.LogRecord) -> None:
        ours = record.name.startswith(self.CLIENTS)
        (self.client_lines if ours else self.lines)[record.name].append(self.format(record))


@contextmanager
def debug_capture() -> Iterator[Capture]:
    """Every logger of the process at DEBUG into a Capture while the block runs; levels restored after."""
    capture = Capture()
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level
              for name in ("", "matrix", "aiohttp", "asyncio", "websockets", "prometheus_client")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.addHandler(capture)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class Run:
    """The relay under test and what it said, by source."""

    def __init__(self, base: str, mock: str, config: Path) -> None:
        self.base = base
        self.mock = mock
        self.config = config
        self.outputs: dict[str, list[str]] = defaultdict(list)
        self.ends: dict[tuple[str, str, str], str] = {}
        self.upstreams: set[str] = set()
        self.logs: dict[str, list[str]] = {}
        self.client_logs: dict[str, list[str]] = {}

    def keep(self, source: str, *texts: object) -> None:
        self.outputs[source] += [t if isinstance(t, str) else repr(t) for t in texts]

    def keep_settings(self, settings) -> None:
        self.keep("settings", repr(settings), str(settings), settings.model_dump(), settings.model_dump_json(),
                  *(f"{cfg!r} {cfg} {cfg.public(name)}" for name, cfg in settings.upstreams.items()))

    async def http(self, method: str, path: str, headers: dict | None = None, **kw) -> httpx.Response:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.request(method, self.base + path, headers=headers, **kw)
        self.keep(f"HTTP {method} {path.split('?')[0]}", f"{response.status_code} {response.reason_phrase}",
                  "\n".join(f"{k}: {v}" for k, v in response.headers.items()), response.text)
        return response

    async def ws_url(self) -> str:
        ticket = (await self.http("POST", "/v1/tickets", AUTH)).json()["ticket"]
        return f"{self.base.replace('http', 'ws', 1)}/v1/chat/ws?ticket={ticket}"

    async def ws_frames(self, *messages: dict, count: int | None = None) -> list[dict]:
        """Send messages on a fresh ticketed socket; collect `count` frames, or frames until a terminal event."""
        frames: list[dict] = []
        async with websockets.connect(await self.ws_url(), logger=logging.getLogger("test.client.ws")) as ws:
            for message in messages:
                await ws.send(json.dumps(message))
            while not _enough(frames, count):
                raw = await ws.recv()
                self.keep("WS frames", raw)
                frames.append(json.loads(raw))
        return frames


def _enough(frames: list[dict], count: int | None) -> bool:
    if count is not None:
        return len(frames) >= count
    return bool(frames) and frames[-1]["type"] in ("done", "error")


def _end(events: list[dict]) -> str:
    end = events[-1]
    return f"{end['type']} {end.get('reason') or end.get('code')}"


async def stream_sse(run: Run, body: dict) -> list[dict]:
    response = await run.http("POST", "/v1/chat/sse", AUTH, json=body)
    assert response.status_code == 200, response.text
    return [json.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: ")]


async def traffic(run: Run) -> None:
    """Every endpoint, every upstream, refusals and faults, on both downstreams, with trace on."""
    for upstream, directive, _ in STREAMS:
        if upstream not in run.upstreams:
            continue
        prompt = f"secrets {upstream} {secrets.token_hex(3)}\n#mock tokens=4 interval_ms=1 {directive}"
        body = {**chat_body(prompt, upstream), "trace": True}
        run.ends["sse", upstream, directive] = _end(await stream_sse(run, body))
        run.ends["ws", upstream, directive] = _end(await run.ws_frames({"type": "chat", **body}))
    stall = await stream_sse(run, chat_body("stall\n#mock tokens=4 interval_ms=1 fault=stall_after:1", "openai"))
    run.ends["sse", "openai", "stall"] = _end(stall)

    # a stream cancelled over HTTP, then resumed over SSE and WS
    sid = "sec-" + secrets.token_hex(4)
    slow = {**chat_body("cancel me\n#mock tokens=200 interval_ms=20", "spark"), "stream_id": sid, "trace": True}
    live = asyncio.get_running_loop().create_task(stream_sse(run, slow))
    await asyncio.sleep(0.3)
    await run.http("POST", f"/v1/streams/{sid}/cancel", AUTH)
    run.ends["sse", "spark", "cancel"] = _end(await live)
    await run.http("GET", f"/v1/streams/{sid}/events", {**AUTH, "Last-Event-ID": "0"})
    await run.ws_frames({"type": "resume", "stream_id": sid, "after": 0})

    # owners: a stream's status by its owner, and by a rotated client's other key
    await run.http("GET", f"/v1/streams/{sid}", AUTH)
    rotated = {**chat_body("rotate\n#mock tokens=3 interval_ms=1", "openai"), "stream_id": sid + "-r"}
    await run.http("POST", "/v1/chat/sse", {"Authorization": f"Bearer {SECRETS['TM_AUTH_KEY_OLD']}"}, json=rotated)
    await run.http("GET", f"/v1/streams/{sid}-r", {"Authorization": f"Bearer {SECRETS['TM_AUTH_KEY_NEW']}"})
    await run.http("GET", f"/v1/streams/{sid}-r", AUTH)

    # refusals
    good = chat_body("hi", "openai")
    await run.http("POST", "/v1/chat/sse", json=good)
    await run.http("POST", "/v1/chat/sse", {"Authorization": f"Bearer {PRESENTED}"}, json=good)
    await run.http("POST", "/v1/chat/sse", {"Authorization": PRESENTED}, json=good)
    await run.http("POST", "/v1/chat/sse", AUTH, content=b"{nope")
    await run.http("POST", "/v1/chat/sse", AUTH, json=chat_body("hi", "nowhere"))
    await run.http("POST", "/v1/chat/sse", AUTH, content=b"x" * 100_000)
    await run.http("GET", "/v1/streams/never/events", AUTH)
    await run.http("POST", "/v1/streams/never/cancel", AUTH)
    await run.http("POST", "/v1/tickets", {"Authorization": f"Bearer {PRESENTED}"})
    await run.http("OPTIONS", "/v1/chat/sse", {"Origin": "https://evil.example",
                                               "Access-Control-Request-Method": "POST"})
    await run.ws_frames({"type": "chat", "messages": []}, {"type": "cancel", "stream_id": "never"}, count=2)
    for url in (f"{run.base.replace('http', 'ws', 1)}/v1/chat/ws",
                f"{run.base.replace('http', 'ws', 1)}/v1/chat/ws?ticket={PRESENTED}"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, logger=logging.getLogger("test.client.ws")):
                pass
        run.keep("WS refused handshakes", str(refused.value), refused.value.response.body or b"")

    # everything an operator or a browser can read
    for path in ("/v1/upstreams", "/metrics", "/healthz", "/", "/static/index.html", "/static/app.js",
                 "/static/style.css", "/nope"):
        response = await run.http("GET", path, AUTH)
        assert response.status_code == (404 if path == "/nope" else 200), path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def run(tmp_path_factory):
    """The run: mock providers that accept only the secrets, the relay configured from ${ENV}, all traffic."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in SECRETS.items():
            env.setenv(name, value)
        credentials = {"spark_api_key": SECRETS["TM_SPARK_API_KEY"],
                       "spark_api_secret": SECRETS["TM_SPARK_API_SECRET"],
                       "baidu_secret_key": SECRETS["TM_BAIDU_SECRET_KEY"],
                       "openai_api_key": SECRETS["TM_OPENAI_API_KEY"]}
        mock_runner = web.AppRunner(create_mock(credentials=credentials), access_log=None, shutdown_timeout=0.25,
                                    logger=logging.getLogger("test.provider"))
        await mock_runner.setup()
        await web.TCPSite(mock_runner, "127.0.0.1", 0).start()
        mock = f"127.0.0.1:{mock_runner.addresses[0][1]}"
        config = tmp_path_factory.mktemp("secrets") / "matrix.toml"
        dead = f"127.0.0.1:{_dead_port()}"
        config.write_text(config_toml(mock, dead, unusable=True))
        try:
            load(config)
        except ConfigError:  # refused at load (test_unusable_spark_urls_are_refused_at_load): leave them out
            config.write_text(config_toml(mock, dead, unusable=False))

        with debug_capture() as capture:
            settings = load(config)
            relay_runner, port = await start_site(create_app(settings), "127.0.0.1", 0)
            the_run = Run(f"http://127.0.0.1:{port}", mock, config)
            the_run.upstreams = set(settings.upstreams)
            the_run.keep_settings(settings)
            try:
                async with asyncio.timeout(60):
                    await traffic(the_run)
            finally:
                await relay_runner.cleanup()
        the_run.logs = dict(capture.lines)
        the_run.client_logs = dict(capture.client_lines)
        try:
            yield the_run
        finally:
            await mock_runner.cleanup()


def test_the_run_used_the_secrets(run):
    """The right secrets opened every vendor and the wrong ones were refused: the secrets were really in play."""
    for down in ("sse", "ws"):
        for upstream, directive, end in STREAMS:
            if upstream not in run.upstreams:
                continue
            got = run.ends[down, upstream, directive]
            assert got == end if end else got.startswith("error "), (down, upstream, directive, got)
    assert run.ends["sse", "openai", "stall"] == "error upstream_timeout"
    assert run.ends["sse", "spark", "cancel"] == "done cancelled"
    assert any('"type": "trace"' in text or '"type":"trace"' in text for text in run.outputs["WS frames"])


def test_owners_appear_and_reveal_no_key(run):
    """Owner values in stream status answers, metrics and log lines are a fingerprint or a client name."""
    answers = [text for source, texts in run.outputs.items() if source.startswith("HTTP GET /v1/streams/sec-")
               and not source.endswith("/events") for text in texts]
    owners = {json.loads(text).get("owner") for text in answers if text.startswith("{")} - {None}
    assert len(owners) == 2 and "client:rotating" in owners
    fingerprint = (owners - {"client:rotating"}).pop()
    assert fingerprint.startswith("key:") and len(fingerprint) == 20
    assert "403 Forbidden" in answers  # the other client's key
    metrics = "\n".join(run.outputs["HTTP GET /metrics"])
    logs = "\n".join(line for lines in run.logs.values() for line in lines)
    for owner in owners:
        assert f'client="{owner}"' in metrics and f'"client":"{owner}"' in logs
    for name, key in SECRETS.items():  # not the key, nor any prefix of it past its fixed "sk-SECRET-" start
        assert not any(key[:n] in owner for owner in owners for n in range(11, len(key) + 1)), name


def test_http_responses_hold_no_secret(run):
    """No HTTP response (status, headers, body: streams, errors, /v1/upstreams, /metrics, the demo) holds a secret."""
    http = {source: texts for source, texts in run.outputs.items() if source.startswith("HTTP ")}
    assert {"HTTP GET /v1/upstreams", "HTTP GET /metrics", "HTTP GET /static/app.js",
            "HTTP POST /v1/chat/sse"} <= set(http)
    assert_clean(http)


def test_ws_frames_and_refusals_hold_no_secret(run):
    """No WS frame (events, trace frames, error events) and no refused WS handshake holds a secret."""
    ws = {source: texts for source, texts in run.outputs.items() if source.startswith("WS ")}
    assert_clean(ws)


def test_settings_never_show_a_secret(run):
    """repr, str, model_dump and JSON of the settings and of each upstream show no secret."""
    assert_clean({"settings": run.outputs["settings"]})


def test_relay_logs_hold_no_secret(run):
    """The relay's log records at DEBUG (its own, aiohttp's, asyncio's), exceptions included, hold no secret."""
    relay_logs = {f"log {name}": lines for name, lines in run.logs.items() if not name.startswith("websockets")}
    assert any(name.startswith("log matrix") for name in relay_logs)
    assert_clean(relay_logs)


def test_websockets_debug_log_holds_no_signed_url(run):
    """The WS client library's DEBUG records (its handshake request line included) hold no signed Spark URL."""
    # With DEBUG on `websockets` (an embedding app, a dictConfig) the library logs "> GET <path
    # and query> HTTP/1.1" for every handshake: for Spark a signed URL that works for minutes.
    # matrix.logs.configure() pins that logger at WARNING; the signed URL must not depend on it.
    assert any("> GET /v1/chat/ws" in line for line in run.client_logs.get("test.client.ws", [])), \
        "the capture saw no websockets DEBUG record: it proves nothing"
    assert_clean({f"log {name}": lines for name, lines in run.logs.items() if name.startswith("websockets")})


# -- configuration errors and the CLI -------------------------------------------------------

BROKEN_CONFIGS = {  # what a typo does to a file whose secrets are inline or come from MATRIX_ variables
    "inline secret, missing url": ('[upstreams.x]\nkind = "openai"\napi_key = "{secret}"\n', {}),
    "inline secret, misspelled key": ('[upstreams.x]\nkind = "openai"\nurl = "http://x"\napi_kee = "{secret}"\n', {}),
    "MATRIX_ variable secret, missing url": ('[upstreams.x]\nkind = "openai"\n',
                                             {"MATRIX_UPSTREAMS__X__API_KEY": "{secret}"}),
    "${ENV} secret, missing url": ('[upstreams.x]\nkind = "openai"\napi_key = "${{TM_OPENAI_API_KEY}}"\n', {}),
    "${ENV} auth key, bad neighbour": ('[auth]\nkeys = ["${{TM_AUTH_KEY}}", 5]\n', {}),
    "inline Spark secrets, http:// url": ('[upstreams.x]\nkind = "spark"\nurl = "http://spark.example/v3.5/chat"\n'
                                          'api_key = "{secret}"\napi_secret = "{secret}"\n', {}),
}


@pytest.mark.parametrize("name", BROKEN_CONFIGS)
def test_config_errors_hold_no_secret(tmp_path, monkeypatch, name):
    """A configuration error names the bad key, never a secret's value, however the secret was given."""
    # str(ValidationError) quotes the failing section's input, secrets included, and
    # `matrix serve` prints a ConfigError to stderr.
    text, env = BROKEN_CONFIGS[name]
    secret = SECRETS["TM_OPENAI_API_KEY"]
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(secret=secret))
    path = tmp_path / "broken.toml"
    path.write_text(text.format(secret=secret))
    with pytest.raises(ConfigError) as refused:
        load(path)
    assert "upstreams.x" in str(refused.value) or "auth.keys" in str(refused.value)
    assert leaks(str(refused.value)) == []


@pytest.mark.parametrize("url", ["ws://127.0.0.1:99999/v3.5/chat", "ws://127.0.0.1:abc/v3.5/chat",
                                 "ws://[::1/v3.5/chat", "ws:///v3.5/chat", "http://spark.example/v3.5/chat"])
def test_unusable_spark_urls_are_refused_at_load(tmp_path, monkeypatch, url):
    """A Spark url the WS client cannot use is a config error at load, naming the field, not a failure per stream."""
    # Regression: a bad port or host once passed the load check, and then every stream failed
    # with an ERROR traceback (ValueError from urllib) or an upstream_unavailable no retry cures.
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "spark.toml"
    path.write_text(f'[server]\ndefault_upstream = "x"\n[upstreams.x]\nkind = "spark"\nurl = "{url}"\n'
                    'api_key = "${TM_SPARK_API_KEY}"\napi_secret = "${TM_SPARK_API_SECRET}"\n')
    with pytest.raises(ConfigError) as refused:
        load(path)
    assert "upstreams.x" in str(refused.value) and leaks(str(refused.value)) == []


async def _matrix(args: list[str], env: dict, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "matrix", *args, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


def _cli_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATRIX_")}
    return {**env, **SECRETS, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}


@ASYNC
async def test_cli_serve_prints_no_secret(run, tmp_path):
    """`matrix serve` at log level debug, through streams, failures and a SIGTERM, prints no secret."""
    proc = await _matrix(["serve", "--config", str(run.config), "--port", "0"], _cli_env(), tmp_path)
    out = b""
    try:
        async with asyncio.timeout(30):
            while b"relay on http://" not in out:
                line = await proc.stdout.readline()
                assert line, (out + await proc.stderr.read()).decode(errors="replace")
                out += line
            base = out.decode().split("relay on ")[1].split()[0].rstrip("/")
            cli = Run(base, run.mock, run.config)
            for upstream in sorted(run.upstreams & {"spark", "spark-wrong", "spark-no-host", "spark-bad-port",
                                                    "baidu-wrong", "openai-wrong"}):
                body = {**chat_body(f"cli {upstream}\n#mock tokens=3 interval_ms=1", upstream), "trace": True}
                await stream_sse(cli, body)
                await cli.ws_frames({"type": "chat", **body})
            await cli.http("GET", "/v1/upstreams", AUTH)
            await cli.http("POST", "/v1/chat/sse", {"Authorization": f"Bearer {PRESENTED}"}, json=chat_body("x"))
            proc.send_signal(signal.SIGTERM)
            rest, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    assert b'"stream end"' in err  # the debug-level JSON log was captured
    assert_clean({"stdout": [(out + rest).decode(errors="replace")],
                  "stderr": err.decode(errors="replace").splitlines(),
                  "responses": [t for texts in cli.outputs.values() for t in texts]})


@ASYNC
async def test_cli_config_error_prints_no_secret(tmp_path):
    """`matrix serve` refusing a broken config (secret in a MATRIX_ variable, url missing) prints no secret."""
    path = tmp_path / "broken.toml"
    path.write_text('[upstreams.x]\nkind = "openai"\n')
    proc = await _matrix(["serve", "--config", str(path), "--port", "0"],
                         _cli_env(MATRIX_UPSTREAMS__X__API_KEY=SECRETS["TM_OPENAI_API_KEY"]), tmp_path)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"upstreams.x" in err
    assert_clean({"stdout": [out.decode()], "stderr": [err.decode()]})


# -- proxy credentials and client keys ---------------------------------------------------------

async def test_proxy_credentials_and_client_keys_never_show(tmp_path, monkeypatch, aiohttp_server):
    """Upstreams behind an authenticating proxy (per upstream and HTTPS_PROXY, right and wrong password) and
    a provider requiring a client certificate whose key is encrypted: streams work, and no log line at
    DEBUG, response, frame, error, /v1/upstreams or the settings show a proxy password or the key."""
    from mock_ai.state import STATE
    from mock_ai.tls import server_context
    from tlsnet import HIDDEN_HOST, PROXY_ENV, ConnectProxy

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    server_leaf = CLIENT_CA.issue_cert(HIDDEN_HOST)
    files = {name: tmp_path / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
    CLIENT_CA.cert_pem.write_to_path(files["ca.pem"])
    server_leaf.cert_chain_pems[0].write_to_path(files["server.pem"])
    server_leaf.private_key_pem.write_to_path(files["server.key"])
    CLIENT_LEAF.cert_chain_pems[0].write_to_path(files["client.pem"])
    files["client.key"].write_bytes(CLIENT_KEY_PEMS["stored"])
    credentials = {"openai_api_key": SECRETS["TM_OPENAI_API_KEY"]}
    mock_app = create_mock(credentials=credentials)
    mock = await aiohttp_server(mock_app, ssl=server_context(files["server.pem"], files["server.key"],
                                                             files["ca.pem"], stats=mock_app[STATE].stats),
                                access_log=None)  # the provider's own log is not the relay's
    async with ConnectProxy(f"{PROXY_USER}:{SECRETS['TM_PROXY_PASSWORD']}", hosts={HIDDEN_HOST: "127.0.0.1"}) as proxy:
        for name, password in (("TM_PROXY_URL", "TM_PROXY_PASSWORD"),
                               ("TM_PROXY_WRONG_URL", "TM_PROXY_WRONG_PASSWORD")):
            monkeypatch.setenv(name, f"http://{PROXY_USER}:{SECRETS[password]}@127.0.0.1:{proxy.port}")
        monkeypatch.setenv("HTTPS_PROXY", os.environ["TM_PROXY_URL"])
        base = f"{HIDDEN_HOST}:{mock.port}"
        tls = (f'ca_file = "{files["ca.pem"]}"\nclient_cert = "{files["client.pem"]}"\n'
               f'client_key = "{files["client.key"]}"\nclient_key_password = "${{TM_CLIENT_KEY_PASSWORD}}"\n')
        openai = f'kind = "openai"\nmodel = "qwen-plus"\napi_key = "${{TM_OPENAI_API_KEY}}"\n{tls}'
        url = f'url = "https://{base}/v1/chat/completions"\n'
        config = tmp_path / "matrix.toml"
        config.write_text(f"""
[server]
default_upstream = "via-config"

[stream]
disconnect_grace_s = 0
retry_attempts = 2
retry_backoff_s = 0.01

[log]
level = "debug"

[upstreams.via-config]
{openai}{url}proxy = "${{TM_PROXY_URL}}"

[upstreams.via-env]
{openai}{url}
[upstreams.wrong-password]
{openai}{url}proxy = "${{TM_PROXY_WRONG_URL}}"

[upstreams.spark-via-proxy]
kind = "spark"
url = "wss://{base}/v3.5/chat"
app_id = "mock-app"
api_key = "mock-key"
api_secret = "mock-secret"
{tls}proxy = "${{TM_PROXY_URL}}"

[upstreams.no-client-cert]
kind = "openai"
url = "https://{base}/v1/chat/completions"
api_key = "${{TM_OPENAI_API_KEY}}"
ca_file = "{files["ca.pem"]}"
""")
        with debug_capture() as capture:
            settings = load(config)
            relay_runner, port = await start_site(create_app(settings), "127.0.0.1", 0)
            monkeypatch.delenv("HTTPS_PROXY")  # the relay decided at start; this test's clients go direct
            run = Run(f"http://127.0.0.1:{port}", base, config)
            run.keep_settings(settings)
            ends = {}
            try:
                async with asyncio.timeout(60):
                    for upstream in settings.upstreams:
                        prompt = f"secrets {upstream}\n#mock tokens=3 interval_ms=1"
                        body = {**chat_body(prompt, upstream), "trace": True}
                        ends["sse", upstream] = _end(await stream_sse(run, body))
                        ends["ws", upstream] = _end(await run.ws_frames({"type": "chat", **body}))
                    await run.http("GET", "/v1/upstreams")
                    await run.http("GET", "/metrics")
            finally:
                await relay_runner.cleanup()
    for down in ("sse", "ws"):  # the secrets were in play: right ones worked, the wrong password was refused
        assert [ends[down, u] for u in ("via-config", "via-env", "spark-via-proxy")] == ["done stop"] * 3
        assert ends[down, "wrong-password"] == "error upstream_rejected"
        assert ends[down, "no-client-cert"].startswith("error ")
    assert sum(t.authorized and t.status == 200 for t in proxy.tunnels) >= 6
    assert_clean({**run.outputs, **{f"log {name}": lines for name, lines in capture.lines.items()}})
    assert any(name.startswith("matrix") for name in capture.lines)
