"""Shared fixtures: the mock providers and the relay, each a real aiohttp server on 127.0.0.1:0."""

from __future__ import annotations

import uuid

import pytest

from matrix.app import create_app
from matrix.config import EngineConfig, LimitsConfig, ServerConfig, Settings, StreamConfig
from mock_ai import relay_upstreams
from mock_ai.app import create_app as create_mock
from pgd import postgres_server
from redisd import redis_server

# Tests default to no disconnect grace, so a stop is visible at once; grace tests set it.
TEST_STREAM = {"disconnect_grace_s": 0, "heartbeat_s": 5, "upstream_idle_timeout_s": 10,
               "retry_backoff_s": 0.01, "replay_ttl_s": 30}


@pytest.fixture
async def mock(aiohttp_server):
    return await aiohttp_server(create_mock())


@pytest.fixture
def engine() -> str:
    """The engine `make_relay` uses; the cross-combination modules parametrise it to run on Redis too."""
    return "memory"


@pytest.fixture
async def engine_config(engine, tmp_path):
    if engine == "memory":
        yield EngineConfig()
        return
    async with redis_server(tmp_path) as server:  # a real redis-server per test, persistence off
        yield EngineConfig(kind="redis", url=server.url, prefix=f"t{uuid.uuid4().hex[:8]}:", owner_lease_s=1.0)


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL cluster for the whole run, started when a test first needs it; a database per test."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def make_relay(engine_config, aiohttp_server, mock):  # engine first: Redis outlives the relays' shutdown
    """Start a relay on the mock with stream/server settings overridden per test."""
    async def make(server: dict | None = None, limits: dict | None = None, **stream):
        settings = Settings(server=ServerConfig(**(server or {})), limits=LimitsConfig(**(limits or {})),
                            stream=StreamConfig(**{**TEST_STREAM, **stream}), engine=engine_config,
                            upstreams=relay_upstreams(f"127.0.0.1:{mock.port}"))
        return await aiohttp_server(create_app(settings))
    return make


@pytest.fixture
async def relay(make_relay):
    return await make_relay()


def base_url(server) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def relay_url(relay) -> str:
    return base_url(relay)


@pytest.fixture
def mock_url(mock) -> str:
    return base_url(mock)
