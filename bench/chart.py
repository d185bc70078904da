"""The PNG chart: latency distribution, added latency, CPU per token and the nginx ratio of the combinations."""

from __future__ import annotations

from pathlib import Path

from .plan import base_of, engine_of, up_of
from .quantiles import CURVE_PCTS

COLORS = {"sse-sse": "#1f77b4", "sse-ws": "#ff7f0e", "ws-sse": "#2ca02c", "ws-ws": "#d62728",
          "openai-sse": "#9467bd"}


def _color(combo: str) -> str | None:
    """A combination's colour; on the Redis engine the same hue, hatched in bars and dash-dotted in curves."""
    return COLORS.get(base_of(combo))


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _spread(cell: dict, key: str) -> tuple[float, float, float]:
    s = cell.get(key) or {}
    m = s.get("median")
    return (m, m - s["min"], s["max"] - m) if m is not None else (0.0, 0.0, 0.0)


def _cdf(ax, report: dict, level: str) -> None:
    dist = (report.get("paced") or {}).get("distributions", {})
    refs_drawn = set()
    for combo, levels in dist.items():
        roles = levels.get(level) or {}
        if roles.get("relay"):
            ax.plot(roles["relay"]["curve_ms"], CURVE_PCTS, color=_color(combo), label=f"{combo} relay",
                    linestyle="-." if engine_of(combo) == "redis" else "-")
        transport = up_of(combo)
        if roles.get("direct") and transport not in refs_drawn:
            refs_drawn.add(transport)
            ax.plot(roles["direct"]["curve_ms"], CURVE_PCTS, color="grey",
                    linestyle="--" if transport == "sse" else ":", label=f"direct {transport}")
    ax.set_xscale("log")
    ax.set_xlabel("per-token latency, ms (log)")
    ax.set_ylabel("percentile")
    ax.set_title(f"Latency distribution at {level} streams (pooled reps)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _bars(ax, combos: list[str], series: list[tuple[str, list[tuple]]], title: str, ylabel: str,
          lines: list[tuple[float, str]] = ()) -> None:
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(combos))]
        ax.bar(xs, [v[0] for v in values], width, yerr=[[v[1] for v in values], [v[2] for v in values]],
               capsize=3, label=name, color=[_color(c) for c in combos], alpha=0.45 + 0.55 * (i + 1) / len(series),
               edgecolor="black", linewidth=0.5, hatch=[("//" if engine_of(c) == "redis" else "") for c in combos])
    for y, label in lines:
        ax.axhline(y, color="black", linestyle="--", linewidth=0.8)
        ax.annotate(label, (len(combos) - 0.5, y), fontsize=7, ha="right", va="bottom")
    ax.set_xticks(range(len(combos)), combos, rotation=30 if len(combos) > 5 else 0, fontsize=8)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    if len(series) > 1:  # the bars take each combination's colour; the legend tells the shades apart
        from matplotlib.patches import Patch
        ax.legend(handles=[Patch(facecolor="grey", alpha=0.45 + 0.55 * (i + 1) / len(series), edgecolor="black",
                                 label=name) for i, (name, _) in enumerate(series)], fontsize=8)


def draw(report: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = report["plan"]
    combos, gate, load = plan["combos"], str(plan["gate_level"]), str(plan["load_level"])
    summary = (report.get("paced") or {}).get("summary", {})
    levels = sorted({lv for c in summary.values() for lv in c}, key=int)
    loaded = [lv for lv in levels if int(lv) > 1] or levels  # 1 stream costs ~4x per token: it would flatten the rest
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    _cdf(axes[0][0], report, gate)
    _bars(axes[0][1], combos, [(p, [_spread(summary[c].get(gate, {}), f"added_{p}_ms") for c in combos])
                               for p in ("p50", "p99")],
          f"Added latency vs direct at {gate} streams (median, min–max)", "ms",
          [(0.5, "p50 goal 0.5"), (1.0, "p99 goal 1.0")])
    _bars(axes[1][0], combos, [(f"{lv} streams", [_spread(summary[c].get(lv, {}), "relay_us_per_token") for c in combos])
                               for lv in loaded], "Relay CPU per token (median, min–max)", "µs of CPU per token")
    if any((summary[c].get(load) or {}).get("ratio_to_nginx") for c in combos):
        _bars(axes[1][1], combos, [("× nginx", [_spread(summary[c].get(load, {}), "ratio_to_nginx") for c in combos])],
              f"Relay CPU per token ÷ nginx, {load} streams, same window", "ratio",
              [(2.0, "goal 2.0"), (1.5, "stretch 1.5")]
              + ([(2.5, "@redis goal 2.5")] if any(engine_of(c) == "redis" for c in combos) else []))
    else:
        _bars(axes[1][1], combos, [("CPU %", [_spread(summary[c].get(load, {}), "relay_pct_core") for c in combos])],
              f"Relay CPU at {load} streams (no nginx reference)", "% of one core", [(70.0, "goal 70 %")])
    m = report["meta"]
    fig.suptitle(f"Transport matrix relay, {plan['mode']} run {m['date']} — {m['machine']['cpu']}, "
                 f"{m['machine']['cores']} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
