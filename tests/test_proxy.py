"""Upstreams through a real forward proxy (HTTP CONNECT): the environment's rules and each upstream's
own `proxy`, credentials, refusals a user can act on, and every stream property kept through a tunnel.

The provider is the mock over TLS at `provider.invalid`, a name only the proxy resolves: a stream
that arrives went through the proxy, as it must on a network that reaches the internet only so.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from clients import CHAT, TIMEOUT, assert_well_formed, chat_body, expected_text, text_of
from test_stop import STOP_BUDGET_S, http_cancel
from tlsnet import (  # noqa: F401
    HIDDEN_HOST, PROXY_ENV, UPSTREAMS, ConnectProxy, mock_stats, pki, tls_mock, tls_relay, tls_upstreams,
)

PROXY_USER, PROXY_PASSWORD = "relay", "pr0xy-pa55word"


@pytest.fixture(autouse=True)
def clean_proxy_env(monkeypatch):
    """Only what a test sets: the machine running the tests may export its own proxy."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def provider(tls_mock):
    """The mock over TLS with a certificate for provider.invalid."""
    return await tls_mock("hidden")


@pytest.fixture
async def proxy(provider):
    async with ConnectProxy(hosts={HIDDEN_HOST: "127.0.0.1"}) as p:
        yield p


@pytest.fixture
async def auth_proxy(provider):
    async with ConnectProxy(f"{PROXY_USER}:{PROXY_PASSWORD}", hosts={HIDDEN_HOST: "127.0.0.1"},
                            deny=("forbidden.invalid",)) as p:
        yield p


def hidden(provider, pki, **network) -> dict:
    return tls_upstreams(HIDDEN_HOST, provider.port, ca_file=str(pki.ca), **network)


def prompt(tag: str, extra: str = "") -> str:
    return f"proxy {tag}\n#mock tokens=8 interval_ms=1 tag={tag} {extra}"


MODES = ["env", "env-credentials", "config-credentials"]


@pytest.mark.parametrize("up", UPSTREAMS)
@pytest.mark.parametrize("mode", MODES)
async def test_streams_through_the_proxy(provider, proxy, auth_proxy, tls_relay, pki, monkeypatch, up, mode):
    """HTTPS_PROXY, or the upstream's own `proxy` with credentials from ${ENV}: each upstream streams byte-exact
    through one CONNECT tunnel to the provider."""
    used = auth_proxy if "credentials" in mode else proxy
    credentials = f"{PROXY_USER}:{PROXY_PASSWORD}@" if "credentials" in mode else ""
    proxy_url = f"http://{credentials}127.0.0.1:{used.port}"
    if mode.startswith("env"):
        monkeypatch.setenv("HTTPS_PROXY", proxy_url)
        upstreams = hidden(provider, pki)
    else:
        monkeypatch.setenv("TM_PROXY_URL", proxy_url)
        upstreams = hidden(provider, pki, proxy="${TM_PROXY_URL}")
    relay = await tls_relay(upstreams)
    text = prompt(f"{mode}-{up}")
    events = await CHAT["sse"](f"http://127.0.0.1:{relay.port}", chat_body(text, up))
    assert_well_formed(events)
    assert events[-1]["type"] == "done" and text_of(events) == expected_text(text)
    assert [(t.target, t.status, t.authorized) for t in used.tunnels] == \
        [(f"{HIDDEN_HOST}:{provider.port}", 200, bool(credentials))]
    async with httpx.AsyncClient() as client:
        listed = (await client.get(f"http://127.0.0.1:{relay.port}/v1/upstreams")).json()["upstreams"]
    [shown] = [u for u in listed if u["name"] == up]
    assert shown["proxy"] == f"http://127.0.0.1:{used.port}"  # no credentials shown
    assert shown["proxy_from"] == ("https_proxy" if mode.startswith("env") else "config")


# refusal -> (how the upstream is set up, the message's end after "refused the tunnel to HOST:PORT: ")
AUTH_REQUIRED = "HTTP 407 Proxy Authentication Required (check the proxy credentials)"
REFUSALS = {
    "wrong-credentials": ({"password": "wrong"}, AUTH_REQUIRED),
    "no-credentials": ({"password": None}, AUTH_REQUIRED),
    "forbidden": ({"host": "forbidden.invalid"}, "HTTP 403 Forbidden (the proxy does not allow this destination)"),
    "unreachable": ({"host": "nowhere.invalid"}, "HTTP 502 Bad Gateway"),
}


@pytest.mark.parametrize("up", UPSTREAMS)
@pytest.mark.parametrize("refusal", REFUSALS)
async def test_proxy_refusal_is_rejected_with_its_status_and_not_retried(provider, auth_proxy, tls_relay, pki,
                                                                         up, refusal):
    """407, 403 or a CONNECT the proxy cannot complete: upstream_rejected with the proxy's status, one attempt."""
    setup, outcome = REFUSALS[refusal]
    password = setup.get("password", PROXY_PASSWORD)
    host = setup.get("host", HIDDEN_HOST)
    credentials = f"{PROXY_USER}:{password}@" if password else ""
    upstreams = tls_upstreams(host, provider.port, ca_file=str(pki.ca),
                              proxy=f"http://{credentials}127.0.0.1:{auth_proxy.port}")
    relay = await tls_relay(upstreams, retry_attempts=3)
    events = await CHAT["ws"](f"http://127.0.0.1:{relay.port}", chat_body("refused", up))
    end = events[-1]
    assert (end["type"], end["code"], end["retryable"]) == ("error", "upstream_rejected", False)
    assert end["message"] == (f"{up}: proxy 127.0.0.1:{auth_proxy.port} refused the tunnel to "
                              f"{host}:{provider.port}: {outcome}")
    assert end["upstream_code"] == f"proxy_{outcome.split()[1]}"
    assert len(auth_proxy.tunnels) == 1  # not retried
    assert (await mock_stats(provider))["tls_hellos"] == 0


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_no_proxy_is_honoured(provider, proxy, tls_relay, pki, monkeypatch, up):
    """A host in NO_PROXY is reached directly: the proxy sees nothing, and a name only the proxy could
    resolve is upstream_unavailable naming the host."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", f"example.com,.{HIDDEN_HOST.split('.')[-1]}")
    relay = await tls_relay(hidden(provider, pki), retry_attempts=1)
    events = await CHAT["sse"](f"http://127.0.0.1:{relay.port}", chat_body("direct", up))
    end = events[-1]
    assert (end["code"], end["retryable"]) == ("upstream_unavailable", True)
    assert end["message"] == f"{up}: cannot resolve {HIDDEN_HOST}"
    assert proxy.tunnels == []


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_loopback_is_never_proxied_by_the_environment(tls_mock, proxy, tls_relay, pki, monkeypatch, up):
    """HTTPS_PROXY and HTTP_PROXY exported: the mock on localhost / 127.0.0.1 is still reached directly."""
    mock = await tls_mock()
    with monkeypatch.context() as env:  # the relay decides at start-up; this test's own clients go direct
        env.setenv("HTTPS_PROXY", proxy.url)
        env.setenv("HTTP_PROXY", proxy.url)
        relay = await tls_relay({**tls_upstreams("localhost", mock.port, ca_file=str(pki.ca)),
                                 "openai-by-ip": {**tls_upstreams("127.0.0.1", mock.port, verify=False)["openai"]}})
    for name in (up, "openai-by-ip"):
        text = prompt(f"loopback-{name}")
        events = await CHAT["sse"](f"http://127.0.0.1:{relay.port}", chat_body(text, name))
        assert text_of(events) == expected_text(text)
    assert proxy.tunnels == []


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_stop_through_the_proxy_closes_the_tunnel(provider, proxy, tls_relay, pki, up):
    """A cancel closes the tunnel (the proxy sees it end) and the provider connection within 100 ms."""
    relay = await tls_relay(hidden(provider, pki, proxy=proxy.url))
    base = f"http://127.0.0.1:{relay.port}"
    tag = uuid.uuid4().hex[:10]
    body = {**chat_body(f"stop me\n#mock tokens=500 interval_ms=10 tag={tag}", up), "stream_id": tag}
    stopped: list[float] = []
    events = []
    async with asyncio.timeout(TIMEOUT):
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            async with client.stream("POST", f"{base}/v1/chat/sse", json=body) as response:
                async for line in response.aiter_lines():
                    events += [line] if line.startswith("data: ") else []
                    if len(events) == 4 and not stopped:
                        await http_cancel(base, tag, stopped)
    [tunnel] = proxy.tunnels
    assert await proxy.closed(tunnel) - stopped[0] < STOP_BUDGET_S
    conn = await provider_connection_tls(provider, tag)
    assert conn["outcome"] == "client_closed" and conn["closed_at"] - stopped[0] < STOP_BUDGET_S
    assert '"reason":"cancelled"' in events[-1]


async def provider_connection_tls(provider, tag: str) -> dict:
    async with asyncio.timeout(TIMEOUT):
        while True:
            conns = (await mock_stats(provider, tag))["connections"]
            if conns and conns[0]["outcome"] != "open":
                return conns[0]
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_idle_timeout_and_retries_apply_through_the_proxy(provider, proxy, tls_relay, pki, up):
    """Through the proxy, a provider failing once with 503 is retried in a new tunnel, and a stall
    ends in upstream_timeout with the tunnel closed."""
    relay = await tls_relay(hidden(provider, pki, proxy=proxy.url), upstream_idle_timeout_s=0.3, retry_attempts=2)
    base = f"http://127.0.0.1:{relay.port}"
    fault = "fault=http_503 fail_times=1"
    retry = prompt(f"retry-{up}", "" if up == "spark" else fault)
    if up == "spark":  # Spark's handshake faults are armed before the upgrade
        async with httpx.AsyncClient(verify=False) as client:
            await client.post(f"https://127.0.0.1:{provider.port}/_mock/arm",
                              json={"vendor": "spark", "directive": fault})
    events = await CHAT["sse"](base, chat_body(retry, up))
    assert events[-1]["type"] == "done" and text_of(events) == expected_text(retry)
    # The SSE upstreams may send the retry on the same kept-alive tunnel; Spark opens a new one.
    assert [c["outcome"] for c in (await mock_stats(provider))["connections"]] == ["fault", "completed"]
    assert {t.status for t in proxy.tunnels} == {200} and len(proxy.tunnels) == (2 if up == "spark" else 1)
    stall = prompt(f"stall-{up}", "fault=stall_after:2")
    events = await CHAT["ws"](base, chat_body(stall, up))
    assert events[-1]["code"] == "upstream_timeout"
    await proxy.closed(proxy.tunnels[-1])


async def test_unreachable_proxy_is_unavailable_and_named(provider, tls_relay, pki):
    """A proxy that is not listening: upstream_unavailable (retryable) naming the proxy, on both transports."""
    async with ConnectProxy() as gone:
        port = gone.port
    relay = await tls_relay(hidden(provider, pki, proxy=f"http://127.0.0.1:{port}"), retry_attempts=1)
    for up in UPSTREAMS:
        end = (await CHAT["sse"](f"http://127.0.0.1:{relay.port}", chat_body("x", up)))[-1]
        assert (end["code"], end["retryable"]) == ("upstream_unavailable", True)
        assert end["message"] == f"{up}: connection refused by proxy 127.0.0.1:{port}"


def test_proxy_settings_are_checked_at_start_without_showing_them(monkeypatch):
    """A proxy URL that cannot work stops the start; the error names where it came from, never its value."""
    from matrix.app import create_app
    from matrix.config import Settings, load
    from matrix.errors import ConfigError
    secret = "s3cret-proxy-pw"
    monkeypatch.setenv("HTTPS_PROXY", f"socks5://u:{secret}@proxy.example:1080")
    with pytest.raises(ConfigError) as env_error:
        create_app(Settings(upstreams=tls_upstreams("api.example.com", 443)))
    assert "https_proxy environment variable must be http://" in str(env_error.value)
    monkeypatch.delenv("HTTPS_PROXY")
    with pytest.raises(ConfigError) as config_error:
        load(None, upstreams={"x": {"kind": "openai", "url": "https://a.example/v1",
                                    "proxy": f"https://u:{secret}@proxy.example"}},
             server__default_upstream="x")
    assert "upstreams.x (kind openai): Value error, proxy must be http://" in str(config_error.value)
    assert secret not in str(env_error.value) + str(config_error.value)


# environment, upstream url, the upstream's own `proxy` -> the proxy chosen (None: direct)
RULES = [
    ({"HTTPS_PROXY": "http://p:3128"}, "https://api.example.com/v1", None, "http://p:3128"),
    ({"HTTPS_PROXY": "http://p:3128"}, "wss://spark.example/v3.5/chat", None, "http://p:3128"),
    ({"HTTPS_PROXY": "http://p:3128"}, "http://api.example.com/v1", None, None),  # http:// uses HTTP_PROXY
    ({"HTTP_PROXY": "http://h:8080"}, "ws://spark.example/v3.5/chat", None, "http://h:8080"),
    ({"ALL_PROXY": "http://a:1"}, "https://api.example.com/v1", None, "http://a:1"),
    ({"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}, "https://x.example/", None, "http://lower:1"),
    ({"HTTPS_PROXY": "p.corp:3128"}, "https://api.example.com/v1", None, "http://p.corp:3128"),  # scheme-less, as curl
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"}, "https://api.example.com/v1", None, None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".example.com"}, "https://api.example.com/v1", None, None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https://api.example.com/v1", None, None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other.com"}, "https://api.example.com/v1", None, "http://p:1"),
    ({"HTTPS_PROXY": "http://p:1"}, "https://localhost:9100/v1", None, None),
    ({"HTTPS_PROXY": "http://p:1"}, "https://127.0.0.2:9100/v1", None, None),
    ({"HTTPS_PROXY": "http://p:1"}, "https://[::1]:9100/v1", None, None),
    ({"HTTPS_PROXY": "http://p:1"}, "https://api.example.com/v1", "", None),  # "" : never a proxy
    ({}, "https://127.0.0.1:9100/v1", "http://mine:3128", "http://mine:3128"),  # asked: even loopback
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https://x.example/", "http://mine:3128", "http://mine:3128"),
]


@pytest.mark.parametrize("env,url,configured,chosen", RULES)
def test_which_proxy_applies(monkeypatch, env, url, configured, chosen):
    """curl's and requests' rules for the environment, loopback never proxied by it, `proxy` overriding it."""
    from pydantic import SecretStr

    from upstreams.proxy import choose
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    route = choose(url, None if configured is None else SecretStr(configured))
    assert (route.url if route else None) == chosen
