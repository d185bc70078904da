"""Smoke test of `matrix bench`: a tiny run writes a complete, well-formed report (no timing is asserted).

The tiny preset runs every combination on the memory engine and the four relay ones on the
Redis engine too (a redis-server the bench starts), the workers phase (`matrix serve
--workers 1` and `2`) and the store phase on SQLite and PostgreSQL (a cluster the bench
starts): `make system` installs redis-server and postgresql, so nothing here is skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.plan import COMBOS, FRONT_DOOR, PRESETS, REDIS_COMBOS

TINY = PRESETS["tiny"].combos

ROOT = Path(__file__).resolve().parent.parent


def _number_or_none(value) -> bool:
    return value is None or isinstance(value, (int, float))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run([sys.executable, "-m", "matrix", "bench", "--tiny", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((out / "tiny.json").read_text()), out, run.stdout


def test_bench_covers_every_combination_and_level(report):
    """Every combination has a paced summary at every level, with latency, CPU and memory figures."""
    data, _, _ = report
    summary = data["paced"]["summary"]
    assert sorted(summary) == sorted(TINY) == sorted((*COMBOS, *REDIS_COMBOS))
    for combo in TINY:
        assert sorted(summary[combo], key=int) == [str(n) for n in data["plan"]["levels"]]
        for cell in summary[combo].values():
            for key in ("added_p50_ms", "added_p99_ms", "relay_us_per_token", "relay_pct_core",
                        "active_kib_per_stream"):
                assert cell[key] is not None and cell[key]["min"] <= cell[key]["median"] <= cell[key]["max"], key
            assert cell["relay_lost"] == 0 and cell["relay_errors"] == 0, cell["first_error"]
            assert _number_or_none((cell["ratio_to_nginx"] or {}).get("median"))


def test_bench_windows_record_references_and_noise(report):
    """Each paced window holds relay and direct streams of the same window, and a noise probe."""
    data, _, _ = report
    windows = data["paced"]["windows"]
    plan = data["plan"]
    assert len(windows) == plan["reps"] * len(plan["combos"]) * len(plan["levels"])
    for w in windows:
        assert w["relay"]["tokens"] == w["level"] * plan["tokens"]
        assert w["direct"]["tokens"] == plan["probes"] * plan["tokens"]
        assert (w["nginx"] is not None) == data["nginx_reference"]
        assert w["noise"]["probe_ms"] > 0 and w["noise"]["box_busy_pct"] >= 0
    assert data["paced"]["distributions"][COMBOS[0]]


def test_bench_reports_ttft_burst_stop_and_goals(report):
    """TTFT, burst and stop are measured per combination, overload once, and every goal row carries a verdict."""
    data, _, _ = report
    for combo in TINY:
        assert data["ttft"]["routes"][combo]["n"] == data["plan"]["ttft_requests"]
        assert data["burst"][combo]["lost"] == 0
        assert data["stop"][combo]["n"] == data["plan"]["stop_streams"]
        assert data["stop"][combo]["not_closed"] == 0
    assert {"direct-sse", "direct-ws"} <= set(data["ttft"]["routes"]) & set(data["stop"])
    assert data["stop"][FRONT_DOOR]["stopped_by"] == "client close"  # the front door has no cancel by id
    assert data["stop"]["sse-sse"]["stopped_by"] == "cancel"
    overload = data["overload"]  # issue 11: twice the streams a relay is set to carry
    assert overload["offered"] == 2 * overload["capacity"] and overload["admitted"] > 0
    assert overload["lost"] == 0 and overload["failed"] == 0
    assert overload["refusals"]["clean"] == overload["refusals"]["n"]
    assert overload["probes"]["healthz"]["n"] > 0 and overload["probes"]["healthz"]["not_200"] == 0
    goals = data["goals"]
    assert len(goals) == 23
    for goal in goals:
        assert goal["met"] in (True, False, None) and goal["target"] and goal["measured"]
        assert all(_number_or_none(v) for v in goal["values"].values())


def test_bench_writes_markdown_chart_and_terminal_table(report):
    """The run writes a Markdown summary and a PNG, and prints the tables on the terminal."""
    data, out, stdout = report
    markdown = (out / "tiny.md").read_text()
    assert "| combo | streams |" in markdown and "Goals" in markdown
    assert data["chart"] is None or (out / data["chart"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "added p50 ms" in stdout and "Goals" in stdout


def test_bench_includes_the_openai_front_door(report):
    """openai-sse is a default combination: in the paced, TTFT, burst and stop tables, paired with sse-sse,
    and judged by its own goal row."""
    data, out, stdout = report
    assert FRONT_DOOR in data["plan"]["combos"]
    assert data["paced"]["summary"][FRONT_DOOR]
    door = data["paced"]["front_door"][str(data["plan"]["load_level"])]
    assert door["pairs"] == data["plan"]["reps"] and door["door"] == FRONT_DOOR and door["base"] == "sse-sse"
    assert door["raw_ratio"]["median"] > 0
    row = next(g for g in data["goals"] if g["goal"].startswith("OpenAI front door CPU per token vs sse-sse"))
    assert set(row["values"]) == {FRONT_DOOR} and row["values"][FRONT_DOOR] > 0 and row["met"] in (True, False)
    markdown = (out / "tiny.md").read_text()
    assert f"| {FRONT_DOOR} | 2 |" in markdown and f"| {FRONT_DOOR} | sse-sse |" in markdown
    assert f"\n{FRONT_DOOR}  " in stdout and "OpenAI front door CPU per token" in stdout


def test_bench_compares_the_redis_engine_with_the_memory_engine(report):
    """Each X@redis is paired with X by repetition (extra latency, CPU ratio), its relay's CPU counts
    redis-server's, and the Redis engine's goal rows carry a value for each."""
    data, out, stdout = report
    summary, pairs = data["paced"]["summary"], data["paced"]["engines"]
    assert sorted(pairs) == sorted(REDIS_COMBOS)
    for combo in REDIS_COMBOS:
        cell = summary[combo][str(data["plan"]["levels"][0])]
        assert cell["relay_us_per_token"]["median"] > cell["redis_us_per_token"]["median"] > 0
        assert cell["redis_pct_core"]["median"] > 0
        pair = pairs[combo][str(data["plan"]["levels"][0])]
        assert pair["pairs"] == data["plan"]["reps"] and pair["redis"] == combo and pair["memory"] == combo[:-6]
        assert _number_or_none(pair["extra_p50_ms"]["median"]) and pair["raw_ratio"]["median"] > 0
    assert all(summary[c][str(data["plan"]["levels"][0])]["redis_pct_core"] is None for c in COMBOS)
    rows = [g for g in data["goals"] if g["goal"].startswith(("Redis engine: added latency", "relay + Redis CPU"))]
    assert len(rows) == 3
    for row in rows:
        assert set(row["values"]) == set(REDIS_COMBOS) and row["met"] in (True, False)
    markdown = (out / "tiny.md").read_text()
    assert "Redis engine vs memory engine" in markdown and "| sse-sse@redis | 2 |" in markdown
    assert "Redis engine vs memory engine" in stdout and "redis-server" in stdout


def test_bench_runs_the_workers_phase(report):
    """`matrix serve --workers 1` and `2` each deliver tokens, both workers of two take a share, the ratio is
    paired by repetition, and the goal row reads it."""
    data, out, stdout = report
    workers, plan = data["workers"], data["plan"]
    assert len(workers["runs"]) == plan["workers_reps"] * len(plan["workers"]) == 2
    for run in workers["runs"]:
        assert run["tokens_per_s"] > 0 and run["errors"] == 0, run["first_error"]
        assert len(run["cpu_pct"]["per_worker"]) == run["workers"] and min(run["cpu_pct"]["per_worker"]) > 0
        assert isinstance(run["saturated"], list)
    assert workers["by_workers"]["2"]["ratio"]["median"] > 0 and workers["by_workers"]["1"]["ratio"] is None
    row = next(g for g in data["goals"] if g["goal"].startswith("`matrix serve --workers N`"))
    assert set(row["values"]) == {"--workers 2"} and row["met"] in (True, False)
    assert "`matrix serve --workers N` at saturation" in (out / "tiny.md").read_text()
    assert "× 1 worker" in stdout


def test_bench_measures_the_conversation_store_on_sqlite_and_postgresql(report):
    """On each store, conversation and plain requests all succeed, every conversation holds every turn, the
    provider received each answer's history, and the goal row of each store reads the added TTFT."""
    data, out, stdout = report
    store, plan = data["store"], data["plan"]
    assert sorted(store["stores"]) == ["postgresql", "sqlite"] and store["combos"] == ["sse-sse", "ws-ws"]
    requests = plan["store_conversations"] * plan["store_turns"]
    for name, cell in store["stores"].items():
        assert "skipped" not in cell, cell.get("skipped")
        assert sorted(cell["by_combo"]) == sorted(store["combos"])
        for combo, c in cell["by_combo"].items():
            assert c["plain"]["errors"] == c["conversation"]["errors"] == 0, c["first_error"]
            for kind in ("plain", "conversation"):
                assert c[kind]["ttft"]["n"] == c[kind]["done_after_last_token"]["n"] == requests
            assert all(isinstance(value, float) for value in c["added"].values()), c["added"]
            back = c["readback"]
            assert back["complete"] == back["conversations"] == plan["store_conversations"], back["first_problem"]
            assert back["history_seen"] == back["answers"] == requests, (name, combo, back)
    rows = [g for g in data["goals"] if g["goal"].startswith("TTFT added by the conversation store")]
    assert [r["goal"].split(",")[1].split(":")[0].strip() for r in rows] == ["SQLite", "PostgreSQL"]
    for row in rows:
        assert set(row["values"]) == set(store["combos"]) and row["met"] in (True, False)
    assert "Conversation store" in (out / "tiny.md").read_text() and "Conversation store" in stdout
