"""Provider-facing transports (sse.py, ws.py) and one pure dialect per vendor."""

from __future__ import annotations

from matrix.config import StreamConfig, UpstreamConfig
from matrix.upstream import Upstream

from .baidu_agent import BaiduAgentDialect
from .openai import OpenAIDialect
from .spark import SparkDialect
from .sse import SSEUpstream
from .ws import WSUpstream

DIALECTS = {"spark": SparkDialect, "baidu-agent": BaiduAgentDialect, "openai": OpenAIDialect}
TRANSPORTS = {"sse": SSEUpstream, "ws": WSUpstream}


def build(name: str, config: UpstreamConfig, stream_config: StreamConfig) -> Upstream:
    dialect = DIALECTS[config.kind]
    return TRANSPORTS[dialect.transport](name, config, dialect, stream_config)
