"""RedisEngine: streams' logs in Redis Streams, ownership by lease, stop and grace by pub/sub, limits by Lua.

The relay that starts a stream runs its pump ("owns" it) and is the only writer of its
log; any relay can follow, resume, stop or check it. Each relay renews a lease; a relay
whose lease runs out is dead, and the first relay to notice ends each of its streams
with one `relay_lost` error, fenced so that nobody writes after it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.asyncio.retry import Retry

from matrix.config import Settings
from matrix.engine import Lost, Stop, new_stream, unattended_s
from matrix.errors import EngineUnavailable, RelayLost, RequestError
from matrix.events import TERMINAL, Error, Event, Start, decode, encode
from matrix.limits import rate_limited, too_many_streams
from matrix.logs import event as log_event
from matrix.stream import Stream

from . import scripts
from .flush import Flusher, Source
from .keys import Keys, entry_id
from .redis_errors import REDIS_ERRORS, cancel_requested, unless_cancelled
from .tail import Tail
from .wire import Wire

log = logging.getLogger("matrix.engine")
LIVE_TTL_MS = 3_600_000  # a live stream's keys outlive a whole cluster's crash by at most an hour


class RedisEngine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = settings.engine
        self.replica = uuid.uuid4().hex[:12]
        self.keys = Keys(self.config.prefix, self.replica)
        self._stop: Stop = lambda stream_id: None
        self._lost: Lost | None = None
        self._owned: dict[str, Source] = {}  # streams whose pump runs here
        self._mirrors: dict[str, Stream] = {}  # logs of streams another relay runs, followed here
        self._owner_of: dict[str, str] = {}  # mirror -> the relay that runs it
        self._readers: dict[str, int] = {}  # readers here, per stream
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self._sync: dict[str, tuple[str, float] | None] = {}  # counts to publish -> (owner, grace) if it fell to 0
        self._sync_wake = asyncio.Event()
        self._ended: list[str] = []  # owned streams whose terminal is in Redis: leave my set
        self._idle_mirrors: set[str] = set()
        self._down_since: float | None = None
        self._down_reason = "not connected yet"
        self._recheck_cancels = False
        self._shas: dict[str, str] = {}
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._chores: set[asyncio.Task] = set()  # short tasks, held so that none is collected mid-way
        url = self.config.url.get_secret_value()
        self._where = urlsplit(url).hostname or url.split("?")[0]  # for messages: never the password
        # Named, so that CLIENT LIST shows which relay holds which connection.
        timeouts = dict(socket_timeout=self.config.timeout_s, socket_connect_timeout=self.config.timeout_s,
                        client_name=f"matrix-{self.replica}")
        # redis-py 8 changed defaults (5 s timeouts, a 100-connection pool): every one is set here.
        self.redis = Redis.from_pool(BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=self.config.timeout_s, retry=Retry(NoBackoff(), 1), **timeouts))
        self._block_ms = int(min(1000, self.config.timeout_s * 500))
        tail_conn = Redis.from_url(url, single_connection_client=True, retry=Retry(NoBackoff(), 0), **timeouts)
        self._tail = Tail(tail_conn, self.redis, self._block_ms, self._trouble, self._healthy)
        self._writer = Wire(url, self.config.timeout_s, f"matrix-{self.replica}")  # the flusher's, lean
        self._flusher = Flusher(self._append, self._settle, self.config.flush_interval_ms / 1000, self._trouble)

    # -- lifecycle ----------------------------------------------------------------------

    def bind(self, stop: Stop, lost: Lost | None = None) -> None:
        self._stop = stop
        self._lost = lost

    async def open(self) -> None:
        try:
            await self._lease()
        except REDIS_ERRORS as exc:  # start anyway, not ready: it may come up after us
            self._trouble(exc)
            log.warning("Redis at %s does not answer (%s): not ready until it does", self._where, exc)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(coro, name=f"engine-{coro.__name__}") for coro in (
            self._flusher.run(), self._tail.run(), self._lease_loop(), self._listen(), self._sync_loop())]

    async def aclose(self) -> None:
        await self._flusher.drain(self.config.timeout_s)
        self._closing = self._flusher.closing = self._tail.closing = True
        for task in self._tasks:
            task.cancel()
        # redis-py can turn a cancellation in flight into a ConnectionError, which the loops
        # catch: they also stop on `_closing`, and the wait is bounded all the same.
        await asyncio.wait(self._tasks, timeout=self.config.timeout_s)
        for timer in self._grace.values():
            timer.cancel()
        if self._flusher.drained:  # every end is in Redis: nothing of ours is left to reap
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    await self.redis.zrem(self.keys.replicas, self.replica)
                    await self.redis.delete(self.keys.mine)
            except (*REDIS_ERRORS, TimeoutError):
                pass
        # Otherwise the lease runs out, and another relay ends what we could not, with relay_lost.
        await self._tail.aclose()
        self._writer.close()
        await self.redis.aclose(close_connection_pool=True)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    def ready(self) -> str | None:
        if self._down_since is None:
            return None
        return f"Redis at {self._where} does not answer: {self._down_reason}"

    @property
    def local_streams(self) -> int:
        return len(self._owned) + len(self._mirrors)

    def _trouble(self, exc: Exception) -> None:
        """Redis failed us: not ready, and after timeout_s every stream here ends (the lease loop)."""
        if not isinstance(exc, REDIS_ERRORS):  # an error reply (OOM, READONLY …) or a bug: show it whole
            log.error("engine: %s", exc, exc_info=exc)
        if self._down_since is None:
            self._down_since = asyncio.get_running_loop().time()
            log_event(log, "engine down", where=self._where, error=f"{type(exc).__name__}: {exc}")
        self._down_reason = f"{type(exc).__name__}: {exc}"

    def _healthy(self) -> None:
        if self._down_since is not None:
            self._down_since = None
            log_event(log, "engine up", where=self._where)

    async def _call(self, coro):
        """A Redis round trip for a request: Redis down is a 503 the client may retry."""
        if self._down_since is not None:
            coro.close()
            raise EngineUnavailable(f"the stream engine is unavailable ({self.ready()}); retry shortly")
        try:
            result = await coro
        except (*REDIS_ERRORS, RedisError) as exc:  # down, or an error reply (OOM, READONLY …)
            self._trouble(exc)
            raise EngineUnavailable(f"the stream engine is unavailable ({self.ready()}); retry shortly") from None
        return result

    async def _eval(self, name: str, keys: list[str], args: list):
        source = getattr(scripts, name)
        if name not in self._shas:
            self._shas[name] = await self.redis.script_load(source)
        try:
            return await self.redis.evalsha(self._shas[name], len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted: its script cache is empty
            self._shas[name] = await self.redis.script_load(source)
            return await self.redis.evalsha(self._shas[name], len(keys), *keys, *args)

    # -- limits ---------------------------------------------------------------------------

    async def admit(self, client: str, stream_id: str) -> None:
        cfg = self.settings.limits
        kind, value = await self._call(self._eval("ADMIT", [self.keys.live(client), self.keys.bucket(client)], [
            stream_id, cfg.max_streams_per_client, cfg.burst, cfg.starts_per_minute / 60,
            f"{self.config.prefix}{{", "}:meta"]))
        if kind == 1:
            raise too_many_streams(int(value), cfg)
        if kind == 2:
            raise rate_limited(float(value))

    async def release(self, client: str, stream_id: str) -> None:
        try:
            await self.redis.srem(self.keys.live(client), stream_id)
        except REDIS_ERRORS as exc:  # ADMIT drops members whose stream has ended
            self._trouble(exc)

    # -- browser tickets ------------------------------------------------------------------

    async def put_ticket(self, ticket: str, client: str, ttl_s: float) -> None:
        await self._call(self.redis.set(self.keys.ticket(ticket), client, px=max(1, int(ttl_s * 1000))))

    async def take_ticket(self, ticket: str) -> str | None:
        client = await self._call(self.redis.getdel(self.keys.ticket(ticket)))  # single use, on every relay
        return client.decode() if client else None

    # -- streams --------------------------------------------------------------------------

    async def create(self, stream_id: str, owner: str, upstream: str, combo: str,
                     conversation: str | None = None) -> tuple[Stream, Stream]:
        k = self.keys
        start = Start(stream_id, 0, upstream, combo)
        created = await self._call(self._eval("CREATE", [k.meta(stream_id), k.log(stream_id), k.mine], [
            self.replica, owner, upstream, combo, encode(start), LIVE_TTL_MS, stream_id, conversation or ""]))
        if not created:
            raise RequestError(f"stream {stream_id!r} already exists", code="stream_exists", status=409)
        source = new_stream(self.settings, stream_id, upstream, combo, cls=Source)
        follow = new_stream(self.settings, stream_id, upstream, combo)
        source.owner = follow.owner = owner
        source.log, source.flushed, source.dead, source._mark = follow, 0, False, self._flusher.mark
        source.renew_at = asyncio.get_running_loop().time() + LIVE_TTL_MS / 2000  # CREATE set the ttl
        self._owned[stream_id] = source
        self._start_grace(stream_id, unattended_s(self.settings))
        return source, follow

    async def find(self, stream_id: str) -> Stream | None:
        if (source := self._owned.get(stream_id)) is not None:
            return source.log
        if (mirror := self._mirrors.get(stream_id)) is not None:
            return mirror
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.meta(stream_id)).xrange(k.log(stream_id))
            meta, entries = await self._call(pipe.execute())
        if not meta or not entries:
            return None
        meta = {key.decode(): value.decode() for key, value in meta.items()}
        mirror = Stream.replica(stream_id, meta["upstream"], meta["combo"], meta["owner"],
                                [decode(fields[b"e"]) for _, fields in entries],
                                self.settings.stream.replay_max_events)
        if stream_id in self._mirrors:  # another request loaded it meanwhile
            return self._mirrors[stream_id]
        if not mirror.finished:
            self._mirrors[stream_id] = mirror
            self._owner_of[stream_id] = meta["replica"]
            self._tail.add(k.log(stream_id), mirror, entries[-1][0].decode())
        return mirror

    async def cancel(self, log: Stream) -> None:
        if log.id in self._owned:
            self._stop(log.id)
            return
        owner = self._owner_of.get(log.id)
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            # The flag is the durable half (the owner checks it on every write and after it
            # resubscribes); the message is the fast half.
            pipe.hset(k.meta(log.id), "cancel", "1")
            if owner:
                pipe.publish(k.channel(owner), f"cancel {log.id}")
            await self._call(pipe.execute())

    def ended(self, writer: Stream) -> None:
        self._owned.pop(writer.id, None)
        if (timer := self._grace.pop(writer.id, None)) is not None:
            timer.cancel()

    def _end_ttl_ms(self) -> int:
        # replay_ttl_s after the end, but long enough for followers elsewhere to read the end first.
        return max(100, int(self.settings.stream.replay_ttl_s * 1000))

    # -- the write path (called by the flusher) -------------------------------------------

    async def _append(self, work: list[tuple[Source, list[Event]]]) -> list:
        """One script call for every stream of a flush: Redis's cost per call, and redis-py's, is shared."""
        k, cfg = self.keys, self.settings.stream
        now = asyncio.get_running_loop().time()
        keys: list[str] = []
        args: list = [self.replica, LIVE_TTL_MS, self._end_ttl_ms(), cfg.replay_max_events]
        for source, events in work:
            sid = source.id
            keys += (k.meta(sid), k.log(sid), k.readers(sid))
            renew = now >= source.renew_at
            if renew:
                source.renew_at = now + LIVE_TTL_MS / 2000
            args += (len(events), "1" if events[-1].__class__ in TERMINAL else "0", "1" if renew else "0")
            for ev in events:
                args += (entry_id(ev.seq), encode(ev))
        if "APPEND" not in self._shas:
            self._shas["APPEND"] = await self.redis.script_load(scripts.APPEND)
        try:
            results = await self._writer.call("EVALSHA", self._shas["APPEND"], len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            del self._shas["APPEND"]  # Redis restarted: load it again, write again (what landed is skipped)
            return await self._append(work)
        self._healthy()
        return results

    def _settle(self, source: Source, events: list[Event], result: object) -> None:
        result = result.decode() if isinstance(result, bytes) else result
        sid = source.id
        if result in ("ok", "cancel"):
            source.flushed = events[-1].seq
            source.log.extend(events)
            if source.log.finished:
                self._ended.append(sid)
            if result == "cancel":
                self._stop(sid)
            return
        source.dead = True
        self._stop(sid)
        if result == "ended":  # another relay took the stream over (our lease lapsed): show its end
            self._spawn(self._adopt_end(source.log))
        else:  # 'gone': Redis lost the stream (restarted empty), or an error reply
            log_event(log, "stream lost by the engine", stream_id=sid, result=str(result))
            self._fail_locally(source, "the stream engine lost this stream's log")

    async def _adopt_end(self, log: Stream) -> None:
        try:
            top = await self.redis.xrevrange(self.keys.log(log.id), count=1)
            log.extend([decode(fields[b"e"]) for _, fields in top])
        except REDIS_ERRORS:
            pass
        if not log.finished:
            log.extend([Error(log.id, log.last_seq + 1, RelayLost.code, "this relay lost its lease on the stream",
                              True)])

    def _fail_locally(self, source: Source, why: str) -> None:
        """End the stream for readers here now, with what the pump produced, then an engine_unavailable error."""
        source.fail(EngineUnavailable(why))
        source.log.extend(source.read(source.flushed))

    # -- readers and grace ----------------------------------------------------------------

    def enter(self, log: Stream) -> None:
        sid = log.id
        self._readers[sid] = self._readers.get(sid, 0) + 1
        self._idle_mirrors.discard(sid)
        if (timer := self._grace.pop(sid, None)) is not None:
            timer.cancel()
        self._sync.setdefault(sid, None)
        self._sync_wake.set()

    def leave(self, log: Stream, grace_s: float) -> None:
        sid = log.id
        self._readers[sid] -= 1
        if self._readers[sid] > 0:
            return
        del self._readers[sid]
        owner = self._owner_of.get(sid)
        if sid in self._mirrors:
            self._drop_mirror(sid)
        self._sync[sid] = None
        if log.finished:
            pass
        elif sid in self._owned:
            self._start_grace(sid, grace_s)
        elif owner:
            self._sync[sid] = (owner, grace_s)  # the owner runs the timer
        self._sync_wake.set()

    def _start_grace(self, sid: str, grace_s: float) -> None:
        if (timer := self._grace.pop(sid, None)) is not None:
            timer.cancel()
        if grace_s <= 0:
            self._stop(sid)
        else:
            self._grace[sid] = asyncio.get_running_loop().call_later(
                grace_s, lambda: self._spawn(self._grace_over(sid)))

    async def _grace_over(self, sid: str) -> None:
        """Stop the pump unless a reader follows the stream here or on another live relay."""
        self._grace.pop(sid, None)
        if sid not in self._owned or self._readers.get(sid):
            return
        try:
            elsewhere = await self._eval("READERS", [self.keys.readers(sid), self.keys.replicas], [self.replica])
        except REDIS_ERRORS as exc:
            self._trouble(exc)
            elsewhere = 0
        if not elsewhere and sid in self._owned and not self._readers.get(sid):
            self._stop(sid)

    def _drop_mirror(self, sid: str) -> None:
        self._mirrors.pop(sid, None)
        self._owner_of.pop(sid, None)
        self._tail.remove(self.keys.log(sid))

    async def _sync_loop(self) -> None:
        """Publish this relay's reader counts, and tell owners when their stream has no reader here."""
        k = self.keys
        while not self._closing and not cancel_requested():
            await self._sync_wake.wait()
            self._sync_wake.clear()
            batch, self._sync = self._sync, {}
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for sid, idle in batch.items():
                        if count := self._readers.get(sid):
                            pipe.hset(k.readers(sid), self.replica, count)
                            pipe.pexpire(k.readers(sid), LIVE_TTL_MS)
                        else:
                            pipe.hdel(k.readers(sid), self.replica)
                            if idle is not None:
                                pipe.publish(k.channel(idle[0]), f"idle {sid} {idle[1]}")
                    await pipe.execute()
                self._healthy()
            except Exception as exc:  # noqa: BLE001  a background loop must not die
                unless_cancelled(exc)
                self._trouble(exc)
                for sid, grace in batch.items():
                    self._sync.setdefault(sid, grace)
                await asyncio.sleep(0.1)
                self._sync_wake.set()

    # -- stop messages ----------------------------------------------------------------------

    async def _listen(self) -> None:
        while not self._closing and not cancel_requested():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.stop_channel)
                self._recheck_cancels = True  # a stop sent while we were not subscribed is in the flag
                while not self._closing and not cancel_requested():
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._on_message(message["data"].decode())
            except Exception as exc:  # noqa: BLE001  a background loop must not die
                unless_cancelled(exc)
                self._trouble(exc)
                await asyncio.sleep(0.2)
            finally:
                await pubsub.aclose()

    def _on_message(self, text: str) -> None:
        what, _, rest = text.partition(" ")
        sid, _, grace = rest.partition(" ")
        if sid not in self._owned:
            return
        if what == "cancel":
            self._stop(sid)
        elif what == "idle" and not self._readers.get(sid):
            self._start_grace(sid, float(grace))

    # -- leases, and the streams of relays that died ----------------------------------------

    async def _lease(self) -> list[str]:
        # Renewed every quarter lease for three quarters of it: a relay that dies is found
        # dead at most one lease after its last renewal, and a live one may miss two beats.
        lease_ms = int(self.config.owner_lease_s * 750)
        dead = await self._eval("LEASE", [self.keys.replicas], [self.replica, lease_ms])
        self._healthy()
        return [r.decode() for r in dead if r.decode() != self.replica]

    async def _lease_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.config.owner_lease_s / 4
        while not self._closing and not cancel_requested():
            try:
                for dead in await self._lease():
                    await self._reap(dead)
                if self._ended:
                    ended, self._ended = self._ended, []
                    await self.redis.srem(self.keys.mine, *ended)
                if self._recheck_cancels:
                    await self._check_cancels()
            except Exception as exc:  # noqa: BLE001  a background loop must not die
                unless_cancelled(exc)
                self._trouble(exc)
            if self._down_since is not None and loop.time() - self._down_since > self.config.timeout_s:
                self._end_everything()
            self._sweep_mirrors()
            await asyncio.sleep(period)

    def _sweep_mirrors(self) -> None:
        """Forget mirrors loaded for a request that never followed them (refused, or nothing to send)."""
        idle = {sid for sid in self._mirrors if not self._readers.get(sid)}
        for sid in idle & self._idle_mirrors:
            self._drop_mirror(sid)
        self._idle_mirrors = idle - self._idle_mirrors

    async def _reap(self, dead: str) -> None:
        """End each live stream of a dead relay with one relay_lost error (the script fences it)."""
        k, end_ttl = self.keys, self._end_ttl_ms()
        message = "the relay running this stream stopped answering; start it again"
        for raw in await self.redis.smembers(k.streams_of(dead)):
            sid = raw.decode()
            owner = await self._eval("LOST", [k.meta(sid), k.log(sid)], [dead, sid, end_ttl, message])
            if owner:
                await self.redis.srem(k.live(owner.decode()), sid)
                log_event(log, "stream lost", stream_id=sid, relay=dead)
                conversation = await self.redis.hget(k.meta(sid), "conversation")
                if self._lost is not None and conversation and (ended := await self.find(sid)) is not None:
                    # Only the relay whose LOST ended it gets here: the answer is saved from the log.
                    self._lost(ended, conversation.decode())
        await self.redis.delete(k.streams_of(dead))
        await self.redis.zrem(k.replicas, dead)

    async def _check_cancels(self) -> None:
        sids = list(self._owned)
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hget(self.keys.meta(sid), "cancel")
            flags = await pipe.execute()
        self._recheck_cancels = False
        for sid, flag in zip(sids, flags):
            if flag:
                self._stop(sid)

    def _end_everything(self) -> None:
        """Redis has been gone longer than timeout_s: no stream here can go on; end them all clearly."""
        if not self._owned and not len(self._tail):
            return
        why = f"the stream engine is unavailable ({self.ready()})"
        for sid, source in list(self._owned.items()):
            self._stop(sid)
            if not source.log.finished:
                self._fail_locally(source, why)
        self._tail.fail_all(lambda mirror: Error(mirror.id, mirror.last_seq + 1, EngineUnavailable.code, why, True))
        log_event(log, "engine gone: streams ended", where=self._where)
