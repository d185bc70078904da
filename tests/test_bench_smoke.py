"""Smoke test of `matrix bench`: a tiny run writes a complete, well-formed report (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.plan import COMBOS, FRONT_DOOR

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
    assert sorted(summary) == sorted(COMBOS)
    for combo in COMBOS:
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
    """TTFT, burst and stop are measured per combination, and every goal row carries a verdict."""
    data, _, _ = report
    for combo in COMBOS:
        assert data["ttft"]["routes"][combo]["n"] == data["plan"]["ttft_requests"]
        assert data["burst"][combo]["lost"] == 0
        assert data["stop"][combo]["n"] == data["plan"]["stop_streams"]
        assert data["stop"][combo]["not_closed"] == 0
    assert {"direct-sse", "direct-ws"} <= set(data["ttft"]["routes"]) & set(data["stop"])
    assert data["stop"][FRONT_DOOR]["stopped_by"] == "client close"  # the front door has no cancel by id
    assert data["stop"]["sse-sse"]["stopped_by"] == "cancel"
    goals = data["goals"]
    assert len(goals) == 10
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
