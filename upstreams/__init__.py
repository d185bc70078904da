"""Provider-facing transports (sse.py, ws.py) and one pure dialect per vendor, found by `DIALECT`.

Importing this package registers every vendor with the core's config: a module here that
defines `DIALECT` (a class whose `Config` is its `[upstreams.NAME]` model) is a vendor.
Adding one is adding that module; nothing else names it (docs/protocols.md, "Adding a vendor").
"""

from __future__ import annotations

import importlib
import pkgutil

from matrix.config import StreamConfig, UpstreamConfig, register_kind
from matrix.provider import Upstream

from .sse import SSEUpstream
from .ws import WSUpstream

TRANSPORTS = {"sse": SSEUpstream, "ws": WSUpstream}


def _discover() -> dict[str, type]:
    dialects = {}
    for module in pkgutil.iter_modules(__path__):
        dialect = getattr(importlib.import_module(f"{__name__}.{module.name}"), "DIALECT", None)
        if dialect is not None:
            dialects[register_kind(dialect.Config)] = dialect
    return dialects


DIALECTS = _discover()


def build(name: str, config: UpstreamConfig, stream_config: StreamConfig) -> Upstream:
    return TRANSPORTS[config.transport](name, config, DIALECTS[config.kind], stream_config)
