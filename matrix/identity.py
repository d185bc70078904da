"""Who a client is: an owner id derived from its API key or its name, never the key or its position.

With `[auth]` keys, a stream (and, later, a conversation) belongs to an owner that is the
same on every replica, after every restart and in any order of the config:

- `client:NAME` for a key listed under `[auth.clients] NAME = [...]`; all of a named
  client's keys (an old and a new one during a rotation) are the same owner;
- `key:FINGERPRINT` for a key in `[auth] keys`: 16 hex digits of a SHA-256 over the key.

Without keys the owner is `ip:ADDRESS`, the peer address, and anyone may touch a stream
whose id they know.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

ANONYMOUS = "ip:"
_DOMAIN = b"transport-matrix client key\x00"  # a hash of ours, not a bare SHA-256 found in tables


def digest(key: str | bytes) -> bytes:
    return hashlib.sha256(_DOMAIN + (key.encode() if isinstance(key, str) else key)).digest()


def fingerprint(key: str) -> str:
    """64 bits of the key's digest: enough to tell configured keys apart, useless for finding the key."""
    return digest(key).hex()[:16]


def owners(keys: Iterable[str], clients: Mapping[str, Iterable[str]]) -> dict[bytes, str]:
    """Each configured key's digest -> its owner. A key configured twice is an error that names
    where it is, never the key itself."""
    table: dict[bytes, str] = {}
    where: dict[bytes, str] = {}
    entries = [(f"auth.clients.{name}", f"client:{name}", k) for name, ks in clients.items() for k in ks]
    entries += [(f"auth.keys[{i}]", f"key:{fingerprint(k)}", k) for i, k in enumerate(keys)]
    for place, owner, key in entries:
        d = digest(key)
        if d in where:
            raise ValueError(f"{place} repeats the key of {where[d]}: a key belongs to one client")
        table[d], where[d] = owner, place
    return table


def authenticated(client: str) -> bool:
    """Whether `client` was identified by an API key (rather than by its address)."""
    return bool(client) and not client.startswith(ANONYMOUS)


def may_touch(owner: str, client: str) -> bool:
    """With keys, only a stream's owner may cancel, resume or inspect it; without, anyone may."""
    return not authenticated(client) or owner == client
