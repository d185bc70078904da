"""The conversation store on SQLite and on a real PostgreSQL: turns, history, exactly-once answers, pages, owners, faults."""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import func, select, update

from matrix.config import StoreConfig, load
from matrix.errors import ConfigError, RequestError, StoreUnavailable
from matrix.store import CONVERSATION_ID_PATTERN, TITLE_MAX_CHARS, Store, default_title, encode_cursor
from mock_ai import relay_upstreams
from stores import build
from stores.sql import SqlStore, schema

from clients import free_port
from pgd import postgres_server

ALICE, BOB = "key:a11ce0000000000", "ip:127.0.0.2"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request, tmp_path) -> str:
    """A new, empty database: an SQLite file, or a database of its own on the run's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/matrix.db"
    return await request.getfixturevalue("postgres").create_database()


@pytest.fixture
async def make_store(db_url):
    """Open stores on the test's database (several may share it), all closed at the end."""
    opened: list[SqlStore] = []

    async def make(**config) -> SqlStore:
        store = SqlStore(StoreConfig(url=db_url, **config))
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.aclose()


@pytest.fixture
async def store(make_store) -> SqlStore:
    return await make_store()


async def turn(store: Store, owner: str, cid: str | None, text: str, answer: str | None = None,
               stream_id: str | None = None) -> str:
    """One user message and, with `answer`, its assistant message; the conversation's id."""
    started = await store.begin_turn(owner, cid, text)
    if answer is not None:
        saved = await store.finish_turn(started.conversation_id, stream_id or f"s-{time.monotonic_ns()}", answer,
                                        "stop")
        assert saved
    return started.conversation_id


@contextmanager
def refused(code: str, status: int = 400) -> Iterator[pytest.ExceptionInfo[RequestError]]:
    """pytest.raises for a RequestError with this code and status."""
    with pytest.raises(RequestError) as error:
        yield error
    assert (error.value.code, error.value.status) == (code, status), error.value


async def test_a_first_turn_starts_a_conversation_titled_by_its_message(store):
    """A turn without an id starts a conversation titled by the start of its message, and sends just that message."""
    text = "  Plan a\ttrip to\nKyoto in spring, with temples, gardens and a day in Nara please  "
    started = await store.begin_turn(ALICE, None, text, system="Be brief.")
    assert started.created and re.match(CONVERSATION_ID_PATTERN, started.conversation_id)
    assert [(m.role, m.content) for m in started.history] == [("system", "Be brief."), ("user", text)]
    got = await store.get_conversation(ALICE, started.conversation_id)
    assert got.conversation.title == default_title(text, 60) == \
        "Plan a trip to Kyoto in spring, with temples, gardens and a…"
    assert got.conversation.owner == ALICE and got.conversation.system == "Be brief."
    assert [(m.id, m.role, m.text, m.status) for m in got.messages] == [(started.message_id, "user", text, None)]


async def test_history_is_the_system_message_then_the_last_n_messages_oldest_first(make_store):
    """History is the system message, then the last `history_messages` stored messages in order, then the new one."""
    store = await make_store(history_messages=4)
    cid = (await store.begin_turn(ALICE, None, "q1", system="sys")).conversation_id
    await store.finish_turn(cid, "s1", "a1", "stop")
    for n in (2, 3):
        await turn(store, ALICE, cid, f"q{n}", f"a{n}", f"s{n}")
    started = await store.begin_turn(ALICE, cid, "q4")
    assert not started.created and started.conversation_id == cid
    assert [(m.role, m.content) for m in started.history] == [
        ("system", "sys"), ("user", "q2"), ("assistant", "a2"), ("user", "q3"), ("assistant", "a3"), ("user", "q4")]


async def test_a_new_system_message_replaces_the_stored_one(store):
    """A turn that gives a system message replaces the conversation's; a turn without one keeps it."""
    cid = (await store.begin_turn(ALICE, None, "q1", system="old")).conversation_id
    assert (await store.begin_turn(ALICE, cid, "q2", system="new")).history[0].content == "new"
    kept = await store.begin_turn(ALICE, cid, "q3")
    assert (kept.history[0].role, kept.history[0].content) == ("system", "new")
    assert (await store.get_conversation(ALICE, cid)).conversation.system == "new"


async def test_answers_without_text_are_saved_but_not_sent_as_history(store):
    """An answer that failed before its first token is kept in the transcript and left out of the history."""
    cid = await turn(store, ALICE, None, "q1")
    assert await store.finish_turn(cid, "s1", "", "upstream_unavailable")
    started = await store.begin_turn(ALICE, cid, "q2")
    assert [(m.role, m.content) for m in started.history] == [("user", "q1"), ("user", "q2")]
    got = await store.get_conversation(ALICE, cid)
    assert [(m.role, m.text, m.status) for m in got.messages] == [
        ("user", "q1", None), ("assistant", "", "upstream_unavailable"), ("user", "q2", None)]


async def test_finish_turn_saves_a_stream_once_however_often_it_is_called(store):
    """Of repeated and concurrent finish_turn calls for one stream exactly one saves; the others change nothing."""
    cid = await turn(store, ALICE, None, "q1")
    assert await store.finish_turn(cid, "s1", "partial ans", "cancelled") is True
    saved_at = (await store.get_conversation(ALICE, cid)).conversation.updated_at
    assert await store.finish_turn(cid, "s1", "partial answer", "stop") is False
    assert (await store.get_conversation(ALICE, cid)).conversation.updated_at == saved_at  # nothing changed at all
    other = await turn(store, ALICE, None, "elsewhere")
    assert await store.finish_turn(other, "s1", "same stream, other conversation", "stop") is False
    results = await asyncio.gather(*(store.finish_turn(cid, "s2", f"answer {i}", "stop") for i in range(8)))
    assert sorted(results) == [False] * 7 + [True]
    answers = [m for m in (await store.get_conversation(ALICE, cid)).messages if m.role == "assistant"]
    assert [(m.stream_id, m.text, m.status) for m in answers] == [
        ("s1", "partial ans", "cancelled"), ("s2", f"answer {results.index(True)}", "stop")]
    assert [m.role for m in (await store.get_conversation(ALICE, other)).messages] == ["user"]


async def test_concurrent_stores_save_a_stream_once(make_store):
    """Two stores (two relays) on one database racing to save the same stream save it once."""
    first, second = await make_store(), await make_store()
    cid = await turn(first, ALICE, None, "q1")
    results = await asyncio.gather(*(s.finish_turn(cid, "s1", "answer", "stop") for s in [first, second] * 4))
    assert sorted(results) == [False] * 7 + [True]
    assert [m.role for m in (await second.get_conversation(ALICE, cid)).messages] == ["user", "assistant"]


ANSWERS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)


@pytest.fixture
async def short_store(make_store) -> SqlStore:
    return await make_store(history_messages=3)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(turns=st.lists(st.tuples(st.integers(0, 2), ANSWERS, st.integers(1, 4)), min_size=1, max_size=10))
async def test_any_turns_keep_each_answer_once_and_send_the_right_history(short_store, turns):
    """Over random turns across three conversations, each answer saved by 1-4 racing calls: one call saves it,
    every history is the last 3 messages before the turn, and every transcript is exact."""
    store, owner = short_store, f"key:{uuid.uuid4().hex[:16]}"  # a new owner per example: nothing shared
    ids: list[str | None] = [None, None, None]
    expected: dict[str, list[tuple[str, str]]] = {}
    for n, (which, answer, calls) in enumerate(turns):
        started = await store.begin_turn(owner, ids[which], f"q{n}")
        cid = ids[which] = started.conversation_id
        sent = [m for m in expected.setdefault(cid, []) if m[0] == "user" or m[1]]  # answers with no text are not
        assert [(m.role, m.content) for m in started.history] == [*sent[-3:], ("user", f"q{n}")]
        expected[cid].append(("user", f"q{n}"))
        saved = await asyncio.gather(*(store.finish_turn(cid, f"{owner}-{n}", answer, "stop") for _ in range(calls)))
        assert sorted(saved) == [False] * (calls - 1) + [True]
        expected[cid].append(("assistant", answer))
    for cid, messages in expected.items():
        assert [(m.role, m.text) for m in (await store.get_conversation(owner, cid)).messages] == messages
    last_used = list(dict.fromkeys(ids[which] for which, _, _ in reversed(turns)))
    assert [c.id for c in (await store.list_conversations(owner))[0]] == last_used


async def test_finish_turn_keeps_how_the_stream_went(store):
    """The saved answer keeps its status, usage, TTFT, duration, upstream and combination; its conversation moves up."""
    cid = await turn(store, ALICE, None, "q1")
    before = (await store.get_conversation(ALICE, cid)).conversation.updated_at
    usage = {"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16}
    assert await store.finish_turn(cid, "s1", "答え\n", "length", usage=usage, ttft_ms=12.5, duration_ms=340.25,
                                   upstream="spark", combo="sse-ws")
    got = await store.get_conversation(ALICE, cid)
    answer = got.messages[-1]
    assert (answer.role, answer.text, answer.status, dict(answer.usage), answer.ttft_ms, answer.duration_ms,
            answer.upstream, answer.combo, answer.stream_id) == (
        "assistant", "答え\n", "length", usage, 12.5, 340.25, "spark", "sse-ws", "s1")
    assert got.conversation.updated_at > before and answer.created_at == got.conversation.updated_at


async def test_finish_turn_on_a_deleted_conversation_saves_nothing(store):
    """An answer whose conversation was deleted mid-stream is not saved, and finish_turn says so."""
    cid = await turn(store, ALICE, None, "q1")
    await store.delete(ALICE, cid)
    assert await store.finish_turn(cid, "s1", "answer", "stop") is False
    assert await _count_messages(store) == 0


async def test_unstorable_characters(store):
    """A NUL or an unpaired surrogate in a client's text is a clear 400; in an answer, it is saved as U+FFFD."""
    for text in ["a\x00b", "a\ud800b"]:
        with refused("invalid_request"):
            await store.begin_turn(ALICE, None, text)
        with refused("invalid_request"):
            await store.begin_turn(ALICE, None, "fine", system=text)
    cid = await turn(store, ALICE, None, "q1")
    assert await store.finish_turn(cid, "s1", "a\x00b\ud800c", "stop")
    assert (await store.get_conversation(ALICE, cid)).messages[-1].text == "a\ufffdb?c"


async def test_listing_pages_newest_first_without_gaps_or_duplicates(store):
    """Pages list the owner's conversations by last update, newest first; following cursors gives each exactly once."""
    ids = [await turn(store, ALICE, None, f"conversation {n}") for n in range(7)]
    await turn(store, BOB, None, "not Alice's")
    await turn(store, ALICE, ids[2], "bumped")  # continuing an old one moves it first
    expected = [ids[2], *reversed([i for i in ids if i != ids[2]])]
    seen, cursor, sizes = [], None, []
    while True:
        items, cursor = await store.list_conversations(ALICE, 3, cursor)
        sizes.append(len(items))
        seen += [c.id for c in items]
        if cursor is None:
            break
    assert seen == expected and sizes == [3, 3, 1]
    assert [c.id for c in (await store.list_conversations(ALICE, 100))[0]] == expected
    assert (await store.list_conversations("ip:10.0.0.9", 5)) == ([], None)


async def test_listing_breaks_ties_by_id(store):
    """Conversations updated in the same microsecond page in id order, none lost across page boundaries."""
    ids = [await turn(store, ALICE, None, f"c{n}") for n in range(5)]
    # the same update time for all: only the id orders them
    await sql(store, lambda conn: conn.execute(update(schema.conversations).values(updated_us=1_700_000_000_000_000)))
    seen, cursor = [], None
    for _ in range(5):
        items, cursor = await store.list_conversations(ALICE, 2, cursor)
        seen += [c.id for c in items]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)


async def test_rename_changes_the_title_only(store):
    """A rename sets the trimmed title and leaves the messages and the listing order alone."""
    first = await turn(store, ALICE, None, "first", "a1", "s1")
    second = await turn(store, ALICE, None, "second")
    renamed = await store.rename(ALICE, first, "  Trip to Kyoto 🚄  ")
    assert renamed.title == "Trip to Kyoto 🚄" and renamed.id == first
    got = await store.get_conversation(ALICE, first)
    assert got.conversation.title == "Trip to Kyoto 🚄" and [m.text for m in got.messages] == ["first", "a1"]
    assert [c.id for c in (await store.list_conversations(ALICE))[0]] == [second, first]
    assert (await store.rename(ALICE, first, "x" * TITLE_MAX_CHARS)).title == "x" * TITLE_MAX_CHARS


@pytest.mark.parametrize("title", ["", "   ", "x" * (TITLE_MAX_CHARS + 1), "two\nlines", "nul\x00", "bell\x07",
                                   "lone \ud800", None, 42, ["list"]])
async def test_bad_titles_are_refused(store, title):
    """A title that is empty, too long, not one printable line, or not a string is 400 invalid_request."""
    cid = await turn(store, ALICE, None, "q1")
    with refused("invalid_request") as error:
        await store.rename(ALICE, cid, title)
    assert error.value.param == "title"
    assert (await store.get_conversation(ALICE, cid)).conversation.title == "q1"


async def test_delete_takes_the_messages_too(store):
    """A deleted conversation is gone with all its messages; deleting it again is 404."""
    cid = await turn(store, ALICE, None, "q1", "a1", "s1")
    kept = await turn(store, ALICE, None, "other", "a2", "s2")
    await store.delete(ALICE, cid)
    with refused("conversation_not_found", 404):
        await store.get_conversation(ALICE, cid)
    with refused("conversation_not_found", 404):
        await store.delete(ALICE, cid)
    assert await _count_messages(store) == 2  # `kept`'s two
    assert [c.id for c in (await store.list_conversations(ALICE))[0]] == [kept]


async def test_others_conversations_are_forbidden_and_unknown_ones_not_found(store):
    """Another owner's conversation is 403 forbidden for every call and stays untouched; an unknown one is 404."""
    cid = await turn(store, ALICE, None, "q1", "a1", "s1")
    for call in [store.get_conversation(BOB, cid), store.rename(BOB, cid, "mine now"), store.delete(BOB, cid),
                 store.begin_turn(BOB, cid, "let me in")]:
        with refused("forbidden", 403) as error:
            await call
        assert error.value.param == "conversation_id"
    got = await store.get_conversation(ALICE, cid)
    assert got.conversation.title == "q1" and [m.text for m in got.messages] == ["q1", "a1"]
    for call in [store.get_conversation(ALICE, "unknown"), store.rename(ALICE, "unknown", "t"),
                 store.delete(ALICE, "unknown")]:
        with refused("conversation_not_found", 404):
            await call


async def test_a_client_may_choose_a_new_conversations_id(store):
    """A turn naming an unused id starts that conversation; the next turn with it continues it; others get 403."""
    started = await store.begin_turn(ALICE, "trip-2026_kyoto", "q1")
    assert started.created and started.conversation_id == "trip-2026_kyoto"
    again = await store.begin_turn(ALICE, "trip-2026_kyoto", "q2")
    assert not again.created and [m.content for m in again.history] == ["q1", "q2"]
    with refused("forbidden", 403):
        await store.begin_turn(BOB, "trip-2026_kyoto", "q3")


async def test_simultaneous_starts_of_one_new_id_make_one_conversation(make_store):
    """Turns racing to start the same new id (on two stores) make one conversation holding every message."""
    first, second = await make_store(), await make_store()
    turns = await asyncio.gather(*(s.begin_turn(ALICE, "race", f"q{n}") for n, s in enumerate([first, second] * 3)))
    assert sum(t.created for t in turns) == 1 and {t.conversation_id for t in turns} == {"race"}
    got = await first.get_conversation(ALICE, "race")
    assert sorted(m.text for m in got.messages) == [f"q{n}" for n in range(6)]
    racing = await asyncio.gather(first.begin_turn(ALICE, "contested", "a"), second.begin_turn(BOB, "contested", "b"),
                                  return_exceptions=True)
    losers = [isinstance(r, RequestError) and r.code == "forbidden" for r in racing]
    assert sorted(losers) == [False, True]
    winner, text = (BOB, "b") if losers[0] else (ALICE, "a")
    assert [m.text for m in (await first.get_conversation(winner, "contested")).messages] == [text]


HOSTILE_IDS = ["", "a" * 65, "../etc", "a/b", "a b", "a.b", "日本語", "x'; DROP TABLE messages; --",
               "1 OR 1=1", "%00", "\x00", "\n", "abc\n", "\u202eabc", 0, ["x"]]


@pytest.mark.parametrize("bad", HOSTILE_IDS, ids=[repr(b)[:24] for b in HOSTILE_IDS])
async def test_hostile_conversation_ids_are_refused(store, bad):
    """A malformed conversation id is 400 invalid_conversation_id on every call, and changes nothing."""
    cid = await turn(store, ALICE, None, "q1")
    for call in [store.begin_turn(ALICE, bad, "q"), store.get_conversation(ALICE, bad),
                 store.rename(ALICE, bad, "t"), store.delete(ALICE, bad)]:
        with refused("invalid_conversation_id") as error:
            await call
        assert error.value.param == "conversation_id"
    assert [c.id for c in (await store.list_conversations(ALICE))[0]] == [cid]
    assert await _count_messages(store) == 1


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


HOSTILE_CURSORS = ["", "garbage!", "a" * 129, "ü" * 8, _b64("123"), _b64("abc.def"), _b64("-5.abc"),
                   _b64("1" * 20 + ".abc"), _b64("5.a/b"), _b64("5.' OR 1=1 --"), _b64("5."), _b64("5.abc\n"),
                   "AAAA", "====", 17, b"bytes"]


@pytest.mark.parametrize("bad", HOSTILE_CURSORS, ids=[repr(b)[:24] for b in HOSTILE_CURSORS])
async def test_hostile_cursors_are_refused(store, bad):
    """A cursor this store did not give out is 400 invalid_cursor."""
    await turn(store, ALICE, None, "q1")
    with refused("invalid_cursor") as error:
        await store.list_conversations(ALICE, 10, bad)
    assert error.value.param == "cursor"


@pytest.mark.parametrize("limit", [0, -1, 101, 10**12, True, "10", 2.5, None])
async def test_page_sizes_out_of_bounds_are_refused(store, limit):
    """A page size that is not an integer from 1 to 100 is 400 invalid_request."""
    with refused("invalid_request") as error:
        await store.list_conversations(ALICE, limit)
    assert error.value.param == "limit"


async def test_a_well_formed_cursor_pages_from_its_key(store):
    """A cursor is only a position: one built for a key pages after that key, within the caller's own conversations."""
    ids = [await turn(store, ALICE, None, f"c{n}") for n in range(3)]
    newest = (await store.list_conversations(ALICE, 1))[0][0]
    after_newest = encode_cursor((newest.updated_at - EPOCH) // timedelta(microseconds=1), newest.id)
    assert [c.id for c in (await store.list_conversations(ALICE, 10, after_newest))[0]] == [ids[1], ids[0]]
    assert (await store.list_conversations(BOB, 10, after_newest)) == ([], None)


async def test_schema_is_created_once_and_a_reopened_store_keeps_its_data(db_url):
    """The first open creates the schema at the current version; closing and reopening keeps every conversation."""
    first = SqlStore(StoreConfig(url=db_url))
    await first.open()
    cid = await turn(first, ALICE, None, "remember me", "I will", "s1")
    await first.aclose()
    second = SqlStore(StoreConfig(url=db_url))
    await second.open()
    try:
        got = await second.get_conversation(ALICE, cid)
        assert [m.text for m in got.messages] == ["remember me", "I will"]
        assert await second.finish_turn(cid, "s1", "again", "stop") is False  # exactly once survives the restart
        assert await sql(second, lambda conn: conn.execute(select(schema.schema_version.c.version)).scalars().all()) \
            == [schema.SCHEMA_VERSION]
    finally:
        await second.aclose()


async def test_relays_opening_a_new_database_together_create_its_schema_once(db_url):
    """Stores opening one new database at the same moment all open, and the schema is created once."""
    stores = [SqlStore(StoreConfig(url=db_url)) for _ in range(4)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        assert await sql(stores[0], lambda conn: conn.execute(select(schema.schema_version.c.version))
                         .scalars().all()) == [schema.SCHEMA_VERSION]
    finally:
        for store in stores:
            await store.aclose()


async def test_an_older_schema_is_upgraded_step_by_step(db_url, monkeypatch):
    """A database at an older version runs each later migration once, in order, and is stamped with the new version."""
    store = SqlStore(StoreConfig(url=db_url))
    await store.open()
    await store.aclose()
    ran = []
    monkeypatch.setattr(schema, "SCHEMA_VERSION", schema.SCHEMA_VERSION + 2)
    monkeypatch.setattr(schema, "MIGRATIONS", {schema.SCHEMA_VERSION - 1: lambda conn: ran.append("second"),
                                               schema.SCHEMA_VERSION: lambda conn: ran.append("third")})
    for _ in range(2):
        store = SqlStore(StoreConfig(url=db_url))
        await store.open()
        await store.aclose()
    assert ran == ["second", "third"]
    assert await sql(store, lambda conn: conn.execute(select(schema.schema_version.c.version)).scalar_one()) \
        == schema.SCHEMA_VERSION
    await store.aclose()


async def test_a_newer_schema_refuses_to_open(store, db_url):
    """A database written by a newer relay is a clear ConfigError: an older relay does not write to it."""
    await sql(store, lambda conn: conn.execute(update(schema.schema_version).values(version=99)))
    newer = SqlStore(StoreConfig(url=db_url))
    with pytest.raises(ConfigError, match="schema is version 99, newer than this relay's 1: upgrade the relay"):
        await newer.open()
    await newer.aclose()


async def test_sqlite_serves_several_stores_on_one_file_at_once(tmp_path):
    """Several stores (relays) writing and reading one SQLite file at once all succeed: WAL and a lock wait."""
    url = f"sqlite:///{tmp_path}/shared.db"
    stores = [SqlStore(StoreConfig(url=url)) for _ in range(4)]
    for store in stores:
        await store.open()
    try:
        async def chat(store: SqlStore, n: int) -> None:
            cid = None
            for i in range(5):
                cid = await turn(store, ALICE, cid, f"{n}-{i}", f"a{n}-{i}", f"s{n}-{i}")
                await store.list_conversations(ALICE)
        await asyncio.gather(*(chat(store, n) for n, store in enumerate(stores * 2)))
        assert await _count_messages(stores[0]) == 8 * 5 * 2
    finally:
        for store in stores:
            await store.aclose()


async def test_the_default_store_is_matrix_db_in_the_working_directory(tmp_path, monkeypatch):
    """With no [store] section, `stores.build` makes an SQLite store on matrix.db in the working directory."""
    monkeypatch.chdir(tmp_path)
    store = build(load(defaults={"upstreams": relay_upstreams()}))
    await store.open()
    await store.aclose()
    assert (tmp_path / "matrix.db").exists()


async def test_an_unopenable_sqlite_file_is_a_clear_error(tmp_path):
    """A file the store cannot open is StoreUnavailable naming the file and SQLite's reason, not a traceback."""
    store = SqlStore(StoreConfig(url=f"sqlite:///{tmp_path}/no/such/dir/matrix.db"))
    with pytest.raises(StoreUnavailable) as error:
        await store.open()
    assert str(error.value) == f"store sqlite {tmp_path}/no/such/dir/matrix.db is unavailable: " \
                               "OperationalError: unable to open database file"
    assert store.ready() == str(error.value)
    await store.aclose()


async def test_unreachable_postgresql_fails_open_at_once_with_a_clear_message():
    """Opening on a port nothing listens on is StoreUnavailable (503, retryable) within a second, password unsaid."""
    port = free_port()
    store = SqlStore(StoreConfig(url=f"postgresql://matrix:hunter2@127.0.0.1:{port}/chats", timeout_s=1))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as error:
        await store.open()
    assert time.monotonic() - started < 1
    assert (error.value.code, error.value.status, error.value.retryable) == ("store_unavailable", 503, True)
    assert str(error.value).startswith(f"store postgresql 127.0.0.1:{port}/chats is unavailable: "
                                       "ConnectionRefusedError: [Errno 111]")  # the rest is the event loop's
    assert "hunter2" not in str(error.value) and store.ready() == str(error.value)
    await store.aclose()


async def test_a_wrong_database_name_is_a_clear_error(postgres):
    """A database the server does not have is StoreUnavailable quoting PostgreSQL's reason."""
    store = SqlStore(StoreConfig(url=postgres.url("nosuchdb")))
    with pytest.raises(StoreUnavailable, match='is unavailable: .*database "nosuchdb" does not exist'):
        await store.open()
    await store.aclose()


@pytest.fixture
def own_postgres():
    """A cluster of this test's own: it gets killed and paused."""
    with postgres_server() as server:
        yield server


async def test_postgresql_killed_mid_run_is_unavailable_then_back(own_postgres):
    """Calls while PostgreSQL is down fail fast with StoreUnavailable; once it is back they work, without reopening."""
    url = await own_postgres.create_database()
    store = SqlStore(StoreConfig(url=url, timeout_s=1))
    await store.open()
    try:
        cid = await turn(store, ALICE, None, "q1", "a1", "s1")
        assert store.ready() is None
        own_postgres.kill()
        for _ in range(2):  # the pool's dead connection, then a refused new one
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.begin_turn(ALICE, cid, "while down")
            assert time.monotonic() - started < 1
        assert store.ready() is not None and "is unavailable" in store.ready()
        own_postgres.start()
        assert [m.content for m in (await store.begin_turn(ALICE, cid, "q2")).history] == ["q1", "a1", "q2"]
        assert store.ready() is None
        assert [m.text for m in (await store.get_conversation(ALICE, cid)).messages] == ["q1", "a1", "q2"]
    finally:
        await store.aclose()


async def test_a_postgresql_that_stops_answering_fails_within_the_timeout(own_postgres):
    """A server that holds connections and answers nothing is StoreUnavailable after about timeout_s, not a hang."""
    url = await own_postgres.create_database()
    store = SqlStore(StoreConfig(url=url, timeout_s=0.5))
    await store.open()
    try:
        cid = await turn(store, ALICE, None, "q1")
        own_postgres.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.finish_turn(cid, "s1", "answer", "stop")
            assert 0.4 < time.monotonic() - started < 2
        finally:
            own_postgres.resume()
        assert await store.finish_turn(cid, "s2", "answer", "stop")
    finally:
        await store.aclose()


async def _count_messages(store: SqlStore) -> int:
    return await sql(store, lambda conn: conn.execute(select(func.count()).select_from(schema.messages)).scalar_one())


async def sql(store: SqlStore, body):
    """`body(connection)` in one transaction on the store's database, as the store runs its own."""
    return await store._transactions.run(body)
