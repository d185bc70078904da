"""The `#mock` directive and the deterministic answer, without sockets."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mock_ai import DirectiveError, Fault, Script
from mock_ai.script import VOCABULARY


def test_directive_line_is_cut_from_the_prompt() -> None:
    """A `#mock` line anywhere in the message sets keys and is not part of the prompt."""
    script = Script.parse("Tell me\n  #mock tokens=3 interval_ms=1.5 tag=t1 stamp=1\nabout SSE\n")
    assert script.prompt == "Tell me\nabout SSE"
    assert (script.tokens, script.interval_ms, script.tag, script.stamp) == (3, 1.5, "t1", True)


def test_without_directive_the_defaults_hold() -> None:
    """A message without a directive gets 12 tokens, 20 ms apart, no fault, usage on."""
    script = Script.parse("  hello  ")
    assert script == Script(prompt="hello")
    assert (script.tokens, script.interval_ms, script.first_token_ms, script.split) == (12, 20.0, 0.0, 0)
    assert (script.fault, script.finish, script.usage, script.fail_times) == (None, "stop", True, None)


def test_a_word_starting_with_mock_is_not_a_directive() -> None:
    """`#mockery` and an inline `#mock` are prompt text."""
    text = "#mockery tokens=3\nsay #mock tokens=3"
    assert Script.parse(text) == Script(prompt=text)


def test_defaults_apply_and_the_directive_wins() -> None:
    """Defaults (as the CLI passes them, None = unset) fill every key a directive leaves out."""
    defaults = {"tokens": 40, "interval_ms": 30, "first-token-ms": None, "fault": "drop_after:5", "usage": False}
    script = Script.parse("hi\n#mock tokens=2", defaults=defaults)
    assert (script.tokens, script.interval_ms, script.first_token_ms) == (2, 30.0, 0.0)
    assert script.fault == Fault("drop_after", 5) and script.usage is False
    assert Script.parse("hi\n#mock fault=none", defaults=defaults).fault is None


@pytest.mark.parametrize("text, fault, status", [
    ("error_before", Fault("error_before"), None),
    ("error_after:3", Fault("error_after", 3), None),
    ("drop_after:0", Fault("drop_after", 0), None),
    ("stall_after:2", Fault("stall_after", 2), None),
    ("malformed_after:1", Fault("malformed_after", 1), None),
    ("http_429", Fault("http_429"), 429),
    ("http_500", Fault("http_500"), 500),
    ("http_503", Fault("http_503"), 503),
    ("handshake_401", Fault("handshake_401"), 401),
])
def test_every_fault_parses(text: str, fault: Fault, status: int | None) -> None:
    """Each fault name parses, prints back as written, and knows its HTTP status."""
    parsed = Script.parse(f"#mock fault={text}").fault
    assert parsed == fault and str(parsed) == text and parsed.http_status == status


@pytest.mark.parametrize("directive", [
    "tokens=-1", "tokens=many", "interval_ms=nan", "finish=maybe", "usage=2", "colour=red",
    "fault=explode", "fault=drop_after", "fault=error_before:2", "tokens",
])
def test_bad_directives_are_refused(directive: str) -> None:
    """A typo in a directive raises DirectiveError instead of being silently ignored."""
    with pytest.raises(DirectiveError):
        Script.parse(f"hi\n#mock {directive}")


def test_the_answer_depends_on_the_prompt_alone() -> None:
    """Directives and message layout change the plan, not the answer's text."""
    plain = Script.parse("What is SSE?").replace(tokens=5)
    scripted = Script.parse("#mock tokens=5 interval_ms=0 fault=drop_after:2 tag=x\nWhat is SSE?\n")
    assert plain.answer_tokens() == scripted.answer_tokens()
    assert Script.parse("What is WS?").answer_text() != Script.parse("What is SSE?").answer_text()


def test_answers_are_identical_in_another_process() -> None:
    """The seed is sha256 of the prompt, not `hash()`, so a fresh interpreter computes the same answer."""
    code = r"from mock_ai import Script; print(Script.parse('hi\n#mock tokens=7').answer_text())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                            env={"PYTHONHASHSEED": "1234", "PYTHONIOENCODING": "utf-8"}, check=True)
    assert result.stdout.rstrip("\n") == Script.parse("hi\n#mock tokens=7").answer_text()


def test_the_vocabulary_exercises_multibyte_utf8() -> None:
    """Tokens mix 1-, 2-, 3- and 4-byte UTF-8 characters."""
    widths = {len(ch.encode()) for token in VOCABULARY for ch in token}
    assert widths == {1, 2, 3, 4}


@given(prompt=st.text(), short=st.integers(0, 30), extra=st.integers(0, 30))
def test_a_shorter_answer_is_a_prefix_of_a_longer_one(prompt: str, short: int, extra: int) -> None:
    """More tokens extend the same answer rather than producing another one."""
    base = Script(prompt=prompt.strip())
    longer = base.replace(tokens=short + extra).answer_tokens()
    assert base.replace(tokens=short).answer_tokens() == longer[:short]
    assert all(token in VOCABULARY for token in longer)


@given(prompt=st.text(alphabet=st.characters(blacklist_characters="#\r"), max_size=40),
       tokens=st.integers(0, 99))
def test_a_directive_line_round_trips(prompt: str, tokens: int) -> None:
    """Appending a directive line sets its keys and leaves the stripped prompt unchanged."""
    script = Script.parse(f"{prompt}\n#mock tokens={tokens}")
    assert script.prompt == prompt.strip() and script.tokens == tokens
