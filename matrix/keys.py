"""Typed keys for what the aiohttp application holds."""

from aiohttp import web

from .relay import Relay

RELAY = web.AppKey("relay", Relay)
