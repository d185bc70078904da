"""Shared fixtures: the mock providers and the relay, each a real aiohttp server on 127.0.0.1:0."""

from __future__ import annotations

import os
import uuid

import pytest

from matrix.app import create_app
from matrix.config import AuthConfig, EngineConfig, LimitsConfig, ServerConfig, Settings, StoreConfig, StreamConfig
from mock_ai import relay_upstreams
from mock_ai.app import create_app as create_mock
from pgd import postgres_server
from redisd import redis_server

# Tests default to no disconnect grace, so a stop is visible at once; grace tests set it.
TEST_STREAM = {"disconnect_grace_s": 0, "heartbeat_s": 5, "upstream_idle_timeout_s": 10,
               "retry_backoff_s": 0.01, "replay_ttl_s": 30}


@pytest.fixture(scope="session", autouse=True)
def _workdir(tmp_path_factory):
    """Relays on the default store (sqlite:///matrix.db, in the working directory) keep it out of the repository."""
    os.chdir(tmp_path_factory.mktemp("cwd"))


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
def store_kind() -> str:
    """The database `make_relay`'s conversation store uses; conversation tests parametrise it to PostgreSQL too."""
    return "sqlite"


@pytest.fixture
async def store_config(store_kind, tmp_path, request) -> StoreConfig:
    if store_kind == "sqlite":
        return StoreConfig(url=f"sqlite:///{tmp_path}/matrix.db")
    return StoreConfig(url=await request.getfixturevalue("postgres").create_database())  # a database per test


@pytest.fixture
def make_relay(engine_config, store_config, aiohttp_server, mock):  # engine first: Redis outlives the relays' shutdown
    """Start a relay on the mock with stream/server/store settings overridden per test."""
    async def make(server: dict | None = None, limits: dict | None = None, store: dict | None = None,
                   auth: dict | None = None, **stream):
        settings = Settings(server=ServerConfig(**(server or {})), limits=LimitsConfig(**(limits or {})),
                            auth=AuthConfig(**(auth or {})),
                            stream=StreamConfig(**{**TEST_STREAM, **stream}), engine=engine_config,
                            store=StoreConfig(**{**dict(store_config), **(store or {})}),
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
