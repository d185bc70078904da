"""Configuration: file, environment overrides, secrets from the environment that never print."""

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from clients import free_port, matrix_serve

from matrix.config import load
from matrix.errors import ConfigError
from mock_ai import relay_upstreams

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
    port = free_port()
    async with matrix_serve("--port", str(port), port=port, cwd=tmp_path) as (_, base):
        async with httpx.AsyncClient() as client:
            listed = (await client.get(f"{base}/v1/upstreams")).json()
    assert listed["default"] == "spark"
    assert {u["url"] for u in listed["upstreams"]} == {
        "ws://127.0.0.1:9100/v3.5/chat", "http://127.0.0.1:9100/assistant/conversation",
        "http://127.0.0.1:9100/v1/chat/completions", "http://127.0.0.1:9100/v1/messages",
        "ws://127.0.0.1:9100/v1/realtime"}


@pytest.mark.parametrize("table, named", [
    ('kind = "sparkle"\nurl = "wss://x/v3.5/chat"', ["upstreams.up", "unknown kind 'sparkle'", "spark"]),
    ('url = "wss://x/v3.5/chat"', ["upstreams.up", "kind is missing", "baidu-agent"]),
    ('kind = "spark"\nurl = "wss://x/v3.5/chat"\napp_id = "a"\napi_key = "k"\napi_secret = "s"\nsecret_key = "z"',
     ["upstreams.up (kind spark)", "secret_key: not a field of kind spark", "api_secret"]),
    ('kind = "spark"\nurl = "wss://x/v3.5/chat"\napi_key = "k"\napi_secret = "s"',
     ["upstreams.up (kind spark)", "app_id: required for kind spark"]),
    ('kind = "baidu-agent"\nurl = "http://x/assistant/conversation"\napp_id = "a"',
     ["upstreams.up (kind baidu-agent)", "secret_key: required for kind baidu-agent"]),
    ('kind = "openai"\nurl = "http://x/v1/chat/completions"\ndomain = "generalv3.5"',
     ["upstreams.up (kind openai)", "domain: not a field of kind openai"]),
])
def test_upstreams_are_checked_against_their_kind(tmp_path, table, named):
    """An unknown kind, another vendor's field or a missing field refuses to load, naming upstream, kind, field."""
    path = tmp_path / "m.toml"
    path.write_text(f"[upstreams.up]\n{table}\n")
    with pytest.raises(ConfigError) as refused:
        load(path)
    for text in named:
        assert text in str(refused.value)


def _documented_configs() -> list[tuple[str, str]]:
    repo = Path(__file__).resolve().parent.parent
    found = []
    for doc in sorted([repo / "README.md", *(repo / "docs").glob("*.md"), repo / "mock_ai" / "README.md"]):
        for i, block in enumerate(re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)):
            found.append((f"{doc.relative_to(repo)}#{i}", block))
    return found


@pytest.mark.parametrize("where, toml", _documented_configs(), ids=[w for w, _ in _documented_configs()])
def test_every_documented_config_loads(tmp_path, monkeypatch, where, toml):
    """Each TOML example in the README and docs/ loads (fragments on top of the mocks' upstreams)."""
    for name in set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", toml)):
        scheme, port = {"REDIS": ("redis", 6379), "DATABASE": ("postgresql", 5432)}.get(
            name.split("_")[0], ("http", 3128))  # a Redis URL, a database URL, a proxy URL
        monkeypatch.setenv(name, f"{scheme}://value-of-{name.lower().replace('_', '-')}:{port}")
    path = tmp_path / "doc.toml"
    path.write_text(toml)
    load(path, defaults={"upstreams": relay_upstreams()})


@pytest.mark.parametrize("table, named", [
    ('kind = "postgres"', "engine.kind"),
    ('kind = "redis"\nurl = "http://127.0.0.1:6379"', "engine.url: Value error, must be a redis://"),
    ('prefix = ""', "engine.prefix"),
    ('owner_lease_s = 0', "engine.owner_lease_s"),
])
def test_engine_config_is_checked(tmp_path, table, named):
    path = tmp_path / "matrix.toml"
    path.write_text(f"[engine]\n{table}\n")
    with pytest.raises(ConfigError, match=re.escape(named)):
        load(path, defaults={"upstreams": relay_upstreams()})


def test_redis_url_password_never_prints(tmp_path, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2-redis@127.0.0.1:6379/0")
    path = tmp_path / "matrix.toml"
    path.write_text('[engine]\nkind = "redis"\nurl = "${REDIS_URL}"\n')
    settings = load(path, defaults={"upstreams": relay_upstreams()})
    assert settings.engine.url.get_secret_value().endswith("@127.0.0.1:6379/0")
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


@pytest.mark.parametrize("table, named", [
    ('url = "mysql://db/chats"', "store.url: Value error, must be a sqlite:///PATH or "
                                 "postgresql://[user[:password]@]host[:port]/database URL (got scheme 'mysql')"),
    ('url = "postgresql+asyncpg://db/chats"', "(got scheme 'postgresql+asyncpg')"),
    ('url = "sqlite:///:memory:"', "store.url: Value error, a sqlite URL names a file"),
    ('url = "sqlite://"', "store.url: Value error, a sqlite URL names a file"),
    ('url = "postgresql:///chats"', "store.url: Value error, a postgresql URL names a host"),
    ('history_messages = -1', "store.history_messages"),
    ('timeout_s = 0', "store.timeout_s"),
    ('title_chars = 2', "store.title_chars"),
    ('kind = "sqlite"', "store.kind"),
])
def test_store_config_is_checked(tmp_path, table, named):
    """A store URL of another scheme, with no file or host, or a bound out of range refuses to load, saying which."""
    path = tmp_path / "matrix.toml"
    path.write_text(f"[store]\n{table}\n")
    with pytest.raises(ConfigError, match=re.escape(named)):
        load(path, defaults={"upstreams": relay_upstreams()})


def test_store_url_from_the_environment_never_prints(tmp_path, monkeypatch):
    """`url = "${DATABASE_URL}"` takes the environment's URL; its password shows in no repr, str or dump."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://matrix:hunter2-pg@db.internal:5432/chats")
    path = tmp_path / "matrix.toml"
    path.write_text('[store]\nurl = "${DATABASE_URL}"\nhistory_messages = 8\n')
    settings = load(path, defaults={"upstreams": relay_upstreams()})
    assert settings.store.url.get_secret_value().endswith("@db.internal:5432/chats")
    assert settings.store.history_messages == 8
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


def test_store_defaults_to_an_sqlite_file_in_the_working_directory(tmp_path, monkeypatch):
    """With no [store] section, conversations go to sqlite:///matrix.db and 20 messages of history."""
    monkeypatch.chdir(tmp_path)  # no matrix.toml here
    settings = load(defaults={"upstreams": relay_upstreams()})
    assert (settings.store.url.get_secret_value(), settings.store.history_messages) == ("sqlite:///matrix.db", 20)


def test_workers_need_the_redis_engine(tmp_path):
    """`--workers 2` with the memory engine refuses to start and says why, before binding anything."""
    result = subprocess.run([sys.executable, "-m", "matrix", "serve", "--workers", "2", "--port", str(free_port())],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert '--workers needs [engine] kind = "redis"' in result.stderr and "own streams" in result.stderr
