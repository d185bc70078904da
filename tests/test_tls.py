"""TLS on both hops: each upstream against the mock served over TLS by a private CA made per run,
certificate failures a user can act on (not retried), mutual TLS, and the relay on HTTPS/WSS."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

import httpx
import openai
import pytest
import websockets
from httpx_sse import aconnect_sse

from clients import CHAT, TIMEOUT, assert_well_formed, chat_body, expected_text, text_of
from matrix.app import create_app
from matrix.config import Settings, load
from mock_ai import relay_upstreams
from matrix.errors import ConfigError
from tlsnet import UPSTREAMS, mock_stats, pki, tls_mock, tls_relay, tls_upstreams  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPENSSL = shutil.which("openssl")


def prompt(tag: str, extra: str = "") -> str:
    return f"tls {tag}\n#mock tokens=8 interval_ms=1 tag={tag} {extra}"


@pytest.mark.parametrize("up", UPSTREAMS)
@pytest.mark.parametrize("trust", ["ca_file", "SSL_CERT_FILE"])
async def test_streams_byte_exact_over_tls(tls_mock, tls_relay, pki, monkeypatch, up, trust):
    """With the private CA trusted by `ca_file` or by SSL_CERT_FILE, each upstream streams byte-exact over TLS."""
    mock = await tls_mock()
    if trust == "SSL_CERT_FILE":
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
        network = {}
    else:
        network = {"ca_file": str(pki.ca)}
    relay = await tls_relay(tls_upstreams("localhost", mock.port, **network))
    text = prompt(f"ok-{up}-{trust}")
    events = await CHAT["sse"](f"http://127.0.0.1:{relay.port}", chat_body(text, up))
    assert_well_formed(events)
    assert events[-1]["type"] == "done" and text_of(events) == expected_text(text)
    stats = await mock_stats(mock)
    assert stats["tls_hellos"] == 1 and [c["outcome"] for c in stats["connections"]] == ["completed"]


# certificate case -> (the mock's certificate, what the client's message says after "certificate verify failed: ")
CERT_FAILURES = {
    "untrusted": ("localhost", "unable to get local issuer certificate for localhost:{port} "
                               "(trust its CA with ca_file or SSL_CERT_FILE)"),
    "wrong-host": ("other-host", "hostname mismatch, certificate is not valid for 'localhost' for localhost:{port} "
                                 "(the url's host must be one of the certificate's names)"),
    "expired": ("expired", "certificate has expired for localhost:{port} "
                           "(the provider must renew it, or this machine's clock is wrong)"),
}


@pytest.mark.parametrize("up", UPSTREAMS)
@pytest.mark.parametrize("case", CERT_FAILURES)
async def test_certificate_failure_is_rejected_with_its_reason_and_not_retried(tls_mock, tls_relay, pki, up, case):
    """A certificate that does not verify ends the stream with upstream_rejected naming the reason and
    host:port, not retryable, after one TLS attempt."""
    cert, reason = CERT_FAILURES[case]
    mock = await tls_mock(cert)
    network = {} if case == "untrusted" else {"ca_file": str(pki.ca)}
    relay = await tls_relay(tls_upstreams("localhost", mock.port, **network), retry_attempts=3)
    events = await CHAT["ws"](f"http://127.0.0.1:{relay.port}", chat_body(prompt(case), up))
    assert_well_formed(events)
    end = events[-1]
    assert (end["type"], end["code"], end["retryable"]) == ("error", "upstream_rejected", False)
    assert end["message"] == f"{up}: certificate verify failed: " + reason.format(port=mock.port)
    assert end["upstream_code"] == "tls_certificate"
    stats = await mock_stats(mock)
    assert stats["tls_hellos"] == 1 and stats["connections"] == []  # one attempt, never past the handshake


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_refused_connection_stays_retryable_with_the_host(tls_relay, up):
    """Nothing listening: upstream_unavailable, retryable, the host and port in the message."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    relay = await tls_relay(tls_upstreams("127.0.0.1", port), retry_attempts=1)
    events = await CHAT["sse"](f"http://127.0.0.1:{relay.port}", chat_body("hi", up))
    end = events[-1]
    assert (end["code"], end["retryable"]) == ("upstream_unavailable", True)
    assert end["message"] == f"{up}: connection refused by 127.0.0.1:{port}"


@pytest.mark.parametrize("up", UPSTREAMS)
@pytest.mark.parametrize("mismatch", ["tls-to-plain", "plain-to-tls"])
async def test_scheme_that_does_not_match_the_port_is_named(tls_mock, tls_relay, mock, up, mismatch):
    """https:// or wss:// to a plain port is rejected as not TLS; plain to a TLS port is a closed connection."""
    if mismatch == "tls-to-plain":
        port, upstreams = mock.port, tls_upstreams("localhost", mock.port)
    else:
        port = (await tls_mock()).port
        upstreams = relay_upstreams(f"localhost:{port}")
    relay = await tls_relay(upstreams, retry_attempts=1)
    end = (await CHAT["sse"](f"http://127.0.0.1:{relay.port}", chat_body("scheme", up)))[-1]
    if mismatch == "tls-to-plain":
        assert (end["code"], end["retryable"], end["upstream_code"]) == ("upstream_rejected", False, "tls_handshake")
        assert end["message"] == (f"{up}: TLS handshake with localhost:{port} failed: wrong version number "
                                  f"(is it a TLS port? use http:// or ws:// for a plain one)")
    else:
        assert (end["code"], end["retryable"]) == ("upstream_unavailable", True)
        assert end["message"] == f"{up}: localhost:{port} closed the connection before answering"


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_mutual_tls_works_with_the_client_certificate(tls_mock, tls_relay, pki, up):
    """A provider requiring client certificates streams when the upstream has client_cert and client_key."""
    mock = await tls_mock(client_ca=pki.ca)
    chain, key = pki.certs["client"]
    relay = await tls_relay(tls_upstreams("localhost", mock.port, ca_file=str(pki.ca), client_cert=str(chain),
                                          client_key=str(key)))
    text = prompt(f"mtls-{up}")
    events = await CHAT["sse"](f"http://127.0.0.1:{relay.port}", chat_body(text, up))
    assert events[-1]["type"] == "done" and text_of(events) == expected_text(text)


@pytest.fixture
def alerting_gateway(pki, tmp_path):
    """`openssl s_server` requiring a client certificate: a real TLS stack that, unlike asyncio's
    server side, sends the TLS alert when a client comes without one (as Go, Envoy and most
    gateways do)."""
    if OPENSSL is None:
        pytest.skip("openssl missing: `make test` installs it")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chain, key = pki.certs["localhost"]
    proc = subprocess.Popen([OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(chain), "-key",
                             str(key), "-CAfile", str(pki.ca), "-Verify", "1", "-www", "-quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = 50
        while deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            deadline -= 1
            time.sleep(0.05)
        assert deadline, "openssl s_server did not start"
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_provider_wanting_a_client_certificate_is_refused_clearly(alerting_gateway, tls_relay, pki, up):
    """Without a client certificate, a provider's TLS alert becomes upstream_rejected saying what to set."""
    relay = await tls_relay(tls_upstreams("localhost", alerting_gateway, ca_file=str(pki.ca)), retry_attempts=3)
    events = await CHAT["sse"](f"http://127.0.0.1:{relay.port}", chat_body("mtls", up))
    end = events[-1]
    assert (end["code"], end["retryable"], end["upstream_code"]) == ("upstream_rejected", False, "tls_alert")
    assert end["message"] == (f"{up}: TLS refused by localhost:{alerting_gateway}: alert certificate required "
                              f"(it wants a client certificate: set client_cert and client_key)")


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_verify_false_streams_and_is_warned_about(tls_mock, tls_relay, caplog, up):
    """verify = false reaches an untrusted provider, with a warning at start-up and in /v1/upstreams."""
    caplog.set_level(logging.WARNING, logger="matrix.upstreams.tls")
    mock = await tls_mock()
    relay = await tls_relay(tls_upstreams("localhost", mock.port, verify=False))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"upstream {up}: TLS certificate verification is OFF" in w for w in warnings), warnings
    text = prompt(f"noverify-{up}")
    events = await CHAT["sse"](f"http://127.0.0.1:{relay.port}", chat_body(text, up))
    assert text_of(events) == expected_text(text)
    async with httpx.AsyncClient() as client:
        listed = (await client.get(f"http://127.0.0.1:{relay.port}/v1/upstreams")).json()["upstreams"]
    [shown] = [u for u in listed if u["name"] == up]
    assert shown["tls_verify"] is False and "verification is off" in shown["warning"]


def test_unusable_tls_files_stop_the_start(tmp_path, pki):
    """A missing CA file, a certificate without its key, or a key that is not the certificate's stops the
    start with the field and the path, never the file's content."""
    def build(**network):
        settings = Settings(upstreams=tls_upstreams("localhost", 9, **network))
        return create_app(settings)
    with pytest.raises(ConfigError, match=r"upstreams\.spark\.ca_file: no such file: .*nope\.pem"):
        build(ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match=r"upstreams\.\w+\.ca_file: cannot load .*: expected a PEM CA bundle"):
        build(ca_file=str(pki.certs["client"][1]))  # a key is not a CA bundle
    chain, _ = pki.certs["client"]
    other_key = pki.certs["localhost"][1]
    with pytest.raises(ConfigError, match=r"client_key: cannot load"):
        build(client_cert=str(chain), client_key=str(other_key))
    path = tmp_path / "half.toml"
    path.write_text('[upstreams.x]\nkind = "openai"\nurl = "https://a.example/v1"\nclient_cert = "c.pem"\n')
    with pytest.raises(ConfigError, match="client_cert and client_key go together"):
        load(path, server__default_upstream="x")


# -- the relay's own port over TLS ------------------------------------------------------------

@pytest.fixture
async def https_relay(tls_relay, pki, mock):
    """The relay on HTTPS (certificate for localhost from the private CA), upstreams on the plain mock."""
    chain, key = pki.certs["localhost"]
    return await tls_relay(relay_upstreams(f"127.0.0.1:{mock.port}"),
                           server={"tls_cert": str(chain), "tls_key": str(key)})


@pytest.mark.parametrize("up", UPSTREAMS)
async def test_relay_serves_sse_and_wss_over_tls(https_relay, pki, up):
    """SSE over https:// (httpx, curl-style) and WebSocket over wss:// stream byte-exact, trusting the CA."""
    base = f"https://localhost:{https_relay.port}"
    text = prompt(f"https-{up}")
    async with asyncio.timeout(TIMEOUT):
        async with httpx.AsyncClient(verify=pki.ctx(), timeout=TIMEOUT) as client:
            async with aconnect_sse(client, "POST", f"{base}/v1/chat/sse", json=chat_body(text, up)) as source:
                sse = [json.loads(e.data) async for e in source.aiter_sse() if e.data]
            metrics = await client.get(f"{base}/metrics")
            page = await client.get(f"{base}/")
        async with websockets.connect(f"wss://localhost:{https_relay.port}/v1/chat/ws", ssl=pki.ctx()) as ws:
            await ws.send(json.dumps({"type": "chat", **chat_body(text, up)}))
            frames = []
            while not frames or frames[-1]["type"] not in ("done", "error"):
                frames.append(json.loads(await ws.recv()))
    for events in (sse, frames):
        assert_well_formed(events)
        assert text_of(events) == expected_text(text)
    assert metrics.status_code == 200 and "matrix_streams_ended_total" in metrics.text
    assert page.status_code == 200 and "<html" in page.text.lower()


async def test_official_openai_package_reaches_the_relay_over_https(https_relay, pki):
    """The official openai package, trusting the private CA, streams Spark's answer through the relay's
    OpenAI-compatible door on HTTPS."""
    text = prompt("https-openai-door")
    async with httpx.AsyncClient(verify=pki.ctx(), timeout=TIMEOUT) as http:
        client = openai.AsyncOpenAI(base_url=f"https://localhost:{https_relay.port}/v1", api_key="any",
                                    http_client=http, max_retries=0)
        stream = await client.chat.completions.create(model="spark", stream=True,
                                                      messages=[{"role": "user", "content": text}])
        got = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert got == expected_text(text)


async def test_relay_with_client_ca_requires_a_client_certificate(tls_relay, pki, mock):
    """With tls_client_ca, a client without a certificate cannot connect; one with a certificate streams."""
    chain, key = pki.certs["localhost"]
    relay = await tls_relay(relay_upstreams(f"127.0.0.1:{mock.port}"),
                            server={"tls_cert": str(chain), "tls_key": str(key), "tls_client_ca": str(pki.ca)})
    base = f"https://localhost:{relay.port}"
    with pytest.raises((httpx.ReadError, httpx.ConnectError, httpx.RemoteProtocolError)):
        async with httpx.AsyncClient(verify=pki.ctx(), timeout=TIMEOUT) as client:
            await client.get(f"{base}/healthz")
    with_cert = pki.ctx()
    with_cert.load_cert_chain(*pki.certs["client"])
    async with httpx.AsyncClient(verify=with_cert, timeout=TIMEOUT) as client:
        assert (await client.get(f"{base}/healthz")).status_code == 200


@pytest.mark.parametrize("down", ["sse", "ws"])
async def test_matrix_chat_with_ca_file(https_relay, pki, down):
    """`matrix chat --url https://… --ca-file CA` streams through the relay on both downstreams."""
    text = prompt(f"chat-{down}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "matrix", "chat", text, "--downstream", down, "--upstream", "openai",
        "--url", f"https://localhost:{https_relay.port}", "--ca-file", str(pki.ca),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO)
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, err.decode()
    assert expected_text(text) in out.decode() and "done/stop" in out.decode()


async def test_mock_over_tls_with_a_throwaway_ca_serves_the_official_openai_client(tmp_path):
    """`matrix mock --tls-throwaway DIR` serves HTTPS; the official openai package, trusting DIR/ca.pem, streams."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "matrix", "mock", "--port", "0", "--tls-throwaway", str(tmp_path / "ca"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO, env={**os.environ,
                                                                                       "MATRIX_UVLOOP": "0"})
    try:
        async with asyncio.timeout(TIMEOUT):
            line = ""
            while "mock providers on" not in line:
                line = (await proc.stdout.readline()).decode()
                assert line, (await proc.stderr.read()).decode()
        port = int(line.split("https://127.0.0.1:")[1].split()[0])
        text = prompt("openai-pkg")
        context = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.pem"))
        async with httpx.AsyncClient(verify=context) as http:
            client = openai.AsyncOpenAI(base_url=f"https://localhost:{port}/v1", api_key="mock-key", http_client=http)
            stream = await client.chat.completions.create(model="qwen-plus", stream=True,
                                                          messages=[{"role": "user", "content": text}])
            got = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert got == expected_text(text)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), TIMEOUT)


@pytest.mark.parametrize("client,upstream", [("fetch", "openai"), ("eventsource", "baidu"), ("ws", "spark")])
async def test_demo_page_in_chromium_over_https(https_relay, pki, client, upstream):
    """The demo page served over HTTPS streams in Chromium over fetch-SSE, EventSource and WSS: Chromium
    trusts exactly the relay's test key (its SPKI pin), not every certificate."""
    browser_tests = pytest.importorskip("test_browser")
    if not os.access(browser_tests.CHROMIUM, os.X_OK):
        pytest.skip(f"{browser_tests.CHROMIUM} missing: `make test` installs Debian's chromium package")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    cert = x509.load_pem_x509_certificate(pki.certs["localhost"][0].read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    pin = base64.b64encode(digest.finalize()).decode()
    text = prompt(f"chromium-{client}")
    async with browser_tests.playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=browser_tests.CHROMIUM, headless=True,
                                            args=[*browser_tests.CHROMIUM_ARGS,
                                                  f"--ignore-certificate-errors-spki-list={pin}"],
                                            timeout=browser_tests.WAIT_MS)
        try:
            page = await (await chromium.new_context()).new_page()
            page.set_default_timeout(browser_tests.WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"https://localhost:{https_relay.port}/")
            await page.wait_for_function("!document.querySelector('#start').disabled")
            await browser_tests.run(page, text, client, upstream)
            assert await browser_tests.ended(page) == "done"
            assert await browser_tests.answer(page) == expected_text(text)
            assert await page.evaluate("location.protocol") == "https:" and not errors
        finally:
            await chromium.close()
