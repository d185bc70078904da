"""Configuration: file, environment overrides, secrets from the environment that never print."""

import asyncio
import sys

import httpx
import pytest

from clients import TIMEOUT

from matrix.config import load
from matrix.errors import ConfigError

TOML = """
[server]
port = 9000
default_upstream = "deep"

[stream]
heartbeat_s = 3

[upstreams.deep]
kind = "openai"
url = "https://api.deepseek.com/chat/completions"
api_key = "${TEST_DEEPSEEK_KEY}"
model = "deepseek-chat"

[upstreams.xf]
kind = "spark"
url = "wss://spark-api.xf-yun.com/v4.0/chat"
domain = "4.0Ultra"
app_id = "abc"
api_key = "k"
api_secret = "${TEST_SPARK_SECRET}"
"""


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_DEEPSEEK_KEY", "sk-very-secret")
    monkeypatch.setenv("TEST_SPARK_SECRET", "spark-very-secret")
    path = tmp_path / "matrix.toml"
    path.write_text(TOML)
    return path


def test_file_and_env_secrets(config_file):
    """Values come from the file and ${ENV} secrets from the environment."""
    settings = load(config_file)
    assert settings.server.port == 9000 and settings.stream.heartbeat_s == 3
    assert settings.upstreams["deep"].api_key.get_secret_value() == "sk-very-secret"
    assert settings.default_upstream() == "deep"


def test_secrets_never_print(config_file):
    """Neither repr, str nor JSON of the settings shows a secret."""
    settings = load(config_file)
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "sk-very-secret" not in text and "spark-very-secret" not in text


def test_env_overrides_file(config_file, monkeypatch):
    """MATRIX_<SECTION>__<KEY> beats the file, and leaves the rest of the section alone."""
    monkeypatch.setenv("MATRIX_SERVER__PORT", "9123")
    settings = load(config_file)
    assert settings.server.port == 9123 and settings.server.default_upstream == "deep"


def test_combo_picks_first_upstream_of_its_transport(config_file):
    """--combo ws-ws makes the first WS upstream the default."""
    settings = load(config_file, server__combo="ws-ws")
    assert settings.default_upstream() == "xf"


def test_missing_env_secret_is_a_clear_error(tmp_path, monkeypatch):
    """A ${NAME} whose variable is unset refuses to start, naming the variable."""
    monkeypatch.delenv("TEST_DEEPSEEK_KEY", raising=False)
    path = tmp_path / "m.toml"
    path.write_text(TOML.split("[upstreams.xf]")[0])
    with pytest.raises(ConfigError, match="TEST_DEEPSEEK_KEY"):
        load(path)


def test_unknown_key_is_refused(tmp_path):
    """A typo in the file is an error, not silently ignored."""
    path = tmp_path / "m.toml"
    path.write_text("[stream]\nheartbeat = 3\n")
    with pytest.raises(ConfigError, match="heartbeat"):
        load(path)


async def test_without_a_file_the_relay_targets_the_mocks(tmp_path):
    """`matrix serve` with no config file targets the bundled mock providers on 127.0.0.1:9100."""
    from test_shutdown import free_port
    port = free_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "matrix", "serve", "--port", str(port),
                                                cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(TIMEOUT):
            while True:
                try:
                    listed = (await client.get(f"http://127.0.0.1:{port}/v1/upstreams")).json()
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
    finally:
        proc.terminate()
        await proc.wait()
    assert listed["default"] == "spark"
    assert {u["url"] for u in listed["upstreams"]} == {
        "ws://127.0.0.1:9100/v3.5/chat", "http://127.0.0.1:9100/assistant/conversation",
        "http://127.0.0.1:9100/v1/chat/completions"}
