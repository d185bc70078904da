"""Typed keys for what the aiohttp application and its requests hold."""

from aiohttp import web

from .access import CLIENT, Access
from .relay import Relay

RELAY = web.AppKey("relay", Relay)
ACCESS = web.AppKey("access", Access)

__all__ = ["ACCESS", "CLIENT", "RELAY"]
