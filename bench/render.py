"""Render the report for people: aligned text tables for the terminal, and a Markdown summary."""

from __future__ import annotations

from .tables import Table, all_tables, med


def text_table(table: Table) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(table.header, *table.rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([table.title, line(table.header), line(["-" * w for w in widths]),
                      *(line(row) for row in table.rows)])


def markdown_table(table: Table) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    return "\n".join([f"**{table.title}**", "", "| " + " | ".join(map(esc, table.header)) + " |",
                      "|" + "---|" * len(table.header), *("| " + " | ".join(map(esc, r)) + " |" for r in table.rows)])


def noise_line(report: dict) -> str:
    noise = (report.get("paced") or {}).get("noise")
    if not noise:
        return ""
    suspect = noise["suspect_windows"]
    again = len(noise.get("discarded", []))
    return (f"Noise ({again} window(s) run again because other processes were busy): speed probe {med(noise['probe_ms'])} ms, box busy {med(noise['box_busy_pct'], 0)} % of 200, "
            f"of which outside the bench {med(noise.get('other_pct'), 0)} %; "
            f"{len(suspect)} suspect window(s){': ' + ', '.join(suspect[:8]) if suspect else ''}"
            f"{' …' if len(suspect) > 8 else ''} (rule: {noise['rule']}).")


def header(report: dict) -> str:
    m, p = report["meta"], report["plan"]
    nginx = ((m["versions"].get("nginx") or "?") if report.get("nginx_reference")
             else "off (not on PATH, --no-nginx, or no phase needs it)")
    redis = f"; redis-server {m['versions'].get('redis-server') or '?'}" if report.get("redis") else ""
    postgresql = ((report.get("store") or {}).get("stores") or {}).get("postgresql") or {}
    if postgresql.get("by_combo"):
        redis += f"; PostgreSQL {m['versions'].get('postgresql') or '?'}"
    return (f"matrix bench --{p['mode']}, {m['date']}, {report['seconds']:.0f} s; "
            f"{m['machine']['cpu']}, {m['machine']['cores']} cores, {m['machine']['memory_gib']} GiB, "
            f"Linux {m['machine']['kernel']}, Python {m['machine']['python']}; relay {m['relay_commit']}"
            f"{' (+uncommitted changes)' if m['relay_uncommitted_changes'] else ''}, loop "
            f"{'uvloop' if p['relay_uvloop'] else 'as shipped'}; nginx {nginx}{redis}; "
            f"upstreams: sse={p['sse_upstream']}, ws={p['ws_upstream']}.")


def terminal(report: dict) -> str:
    parts = [header(report)] + [text_table(t) for t in all_tables(report)] + [noise_line(report)]
    return "\n\n".join(p for p in parts if p)


def markdown(report: dict, chart_name: str | None) -> str:
    p = report["plan"]
    parts = [f"# Transport matrix benchmark ({p['mode']})", header(report)]
    if chart_name:
        parts.append(f"![latency distribution and CPU per token of the combinations]({chart_name})")
    parts += [markdown_table(t) for t in all_tables(report)]
    parts += [noise_line(report), METHOD]
    return "\n\n".join(x for x in parts if x) + "\n"


METHOD = """**Method.** Mock providers (uvloop), relay (`matrix serve`, restarted before every paced window) and \
nginx (`proxy_buffering off`, 1 worker) run as separate processes on 127.0.0.1; the bench process drives \
every stream. Each token carries the mock's `time.monotonic_ns()` at send; latency = receipt − stamp. Every \
paced window runs the relayed streams plus direct and nginx reference streams of the same vendor protocol \
in the same time window, all opened and held idle first (idle RSS), first tokens scheduled for one instant \
with a random phase. CPU = on-CPU ns from `/proc/<pid>/task/*/schedstat` over the streaming window, per \
token delivered; × nginx = relay µs/token ÷ nginx µs/token of the same window (nginx carries only the \
reference streams, as in docs/measuring.md, "Same-window references"). Memory = relay RSS growth per stream over its \
post-warm-up baseline. Windows run in shuffled order per repetition; figures are medians (min–max) over \
repetitions. A combination marked `@redis` runs on a second relay with `[engine] kind = "redis"` and a \
redis-server the bench starts (persistence off, emptied whenever that relay restarts); its CPU and memory are \
the relay's and redis-server's together, and each of its windows is paired with the same repetition's window \
of the combination on the memory engine. The workers phase runs `matrix serve --workers N` (Redis engine) under \
unpaced streams from a cheap token source (bench/firehose.py) and counts the tokens its clients receive; the \
source, Redis and the bench share the same cores, and each run says what had no CPU to spare. The store phase \
runs a relay per conversation store (an SQLite file, opened as the relay opens it: WAL, synchronous=NORMAL; a \
PostgreSQL cluster the bench starts, with PostgreSQL's defaults: fsync on) and sends it sequential requests, those \
that continue a conversation shuffled among those that name none; afterwards it reads every conversation back."""
