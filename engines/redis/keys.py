"""Key and channel names. Every per-stream key carries `{stream_id}`, so a stream's keys share one slot."""

from __future__ import annotations

import hashlib


class Keys:
    def __init__(self, prefix: str, replica: str) -> None:
        self.prefix = prefix
        self.replicas = f"{prefix}replicas"  # ZSET replica -> lease deadline (ms, Redis's clock)
        self.mine = self.streams_of(replica)
        self.stop_channel = self.channel(replica)

    def meta(self, stream_id: str) -> str:  # HASH replica, owner, upstream, combo, ended, cancel
        return f"{self.prefix}{{{stream_id}}}:meta"

    def log(self, stream_id: str) -> str:  # STREAM of events, entry id 0-(seq+1), field e = event JSON
        return f"{self.prefix}{{{stream_id}}}:log"

    def readers(self, stream_id: str) -> str:  # HASH replica -> readers following there
        return f"{self.prefix}{{{stream_id}}}:readers"

    def streams_of(self, replica: str) -> str:  # SET of the streams whose pump runs on `replica`
        return f"{self.prefix}replica:{replica}:streams"

    def channel(self, replica: str) -> str:  # pub/sub: "cancel SID" / "idle SID GRACE_MS" for `replica`
        return f"{self.prefix}replica:{replica}:stop"

    def live(self, client: str) -> str:  # SET of a client's live streams (max_streams_per_client)
        return f"{self.prefix}client:{client}:live"

    def bucket(self, client: str) -> str:  # HASH tokens, at (starts_per_minute)
        return f"{self.prefix}client:{client}:bucket"

    def ticket(self, ticket: str) -> str:  # STRING client, expiring; named by a digest: no live credential in a key
        return f"{self.prefix}ticket:{hashlib.sha256(ticket.encode()).hexdigest()}"


def entry_id(seq: int) -> str:
    """The Redis Stream entry id of event `seq`: explicit, so Redis itself refuses a second writer of a seq."""
    return f"0-{seq + 1}"
