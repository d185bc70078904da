"""`matrix bench`: options, the run on the harness's event loop, and the files it writes."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import orjson

from . import chart, procs, render, runner
from .plan import ENGINES, KNOWN_COMBOS, PHASES, PRESETS, Plan, with_engines
from .progress import Progress

RESULTS = Path(__file__).resolve().parent / "results"
EPILOG = """examples:
  matrix bench --quick                                  # about 2 min, writes bench/results/quick.*
  matrix bench                                          # full run, about 10 min, writes bench/results/full.*
  matrix bench --quick --combos sse-sse --levels 50 --phases paced   # one combination, ~15 s
  matrix bench --quick --combos sse-sse,openai-sse      # the OpenAI front door against plain SSE
  matrix bench --quick --engines memory,redis           # every combination on both engines, about 4 min
  matrix bench --quick --combos sse-sse,sse-sse@redis --levels 50 --phases paced   # one engine pair, ~25 s
  matrix bench --quick --phases workers                 # `matrix serve --workers 1` vs 2 at saturation, ~25 s
  matrix bench --quick --phases store                   # TTFT added by the conversation store, SQLite and PostgreSQL
"""


def _list(kind):
    return lambda text: tuple(kind(x) for x in text.split(",") if x)


def parse(argv: list[str]) -> tuple[Plan, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="matrix bench", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="about 2 minutes")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="about 10 minutes (default)")
    mode.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help="a few seconds (smoke test)")
    p.add_argument("--combos", type=_list(str), help=f"comma list of {','.join(KNOWN_COMBOS)} (downstream-upstream; "
                        "openai = the OpenAI-compatible front door, POST /v1/chat/completions; @redis = on the Redis "
                        "engine)")
    p.add_argument("--engines", type=_list(str), help=f"comma list of {','.join(ENGINES)}: run the combinations on "
                        "each (redis: the four relay combinations as X@redis; the front door only if named as such)")
    p.add_argument("--levels", type=_list(int), help="concurrent relayed streams per paced window, e.g. 1,50,200")
    p.add_argument("--reps", type=int, help="paced repetitions")
    p.add_argument("--tokens", type=int, help="tokens per paced stream")
    p.add_argument("--interval-ms", type=float, help="pause between tokens (20 = 50 tok/s)")
    p.add_argument("--probes", type=int, help="direct and nginx reference streams per paced window")
    p.add_argument("--phases", type=_list(str), help=f"comma list of {','.join(PHASES)}")
    p.add_argument("--workers", type=_list(int), help="the workers phase's `matrix serve --workers N` (default 1,2)")
    p.add_argument("--workers-streams", type=int, help="concurrent unpaced streams in the workers phase")
    p.add_argument("--workers-tokens", type=int, help="tokens per stream in the workers phase")
    p.add_argument("--workers-seconds", type=float, help="seconds counted per workers run")
    p.add_argument("--workers-source", choices=("firehose", "mock"),
                   help="the workers phase's token source: bench/firehose.py (default, cheap per token) or the mock")
    p.add_argument("--store-conversations", type=int,
                   help="the store phase's conversations per store and combination (default 10)")
    p.add_argument("--store-turns", type=int, help="the store phase's turns per conversation (full 30, quick 12)")
    p.add_argument("--overload-capacity", type=int,
                   help="the overload phase's max_active_streams; twice as many clients are offered (default 100)")
    p.add_argument("--sse-upstream", choices=("openai", "baidu"), help="the SSE vendor (default openai)")
    p.add_argument("--no-nginx", dest="nginx", action="store_const", const=False, help="skip the nginx reference")
    p.add_argument("--relay-uvloop", action="store_const", const=True, help="run the relay on uvloop")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    p.add_argument("--name", help="file name stem (default: the mode; 'adhoc' when options narrow the run)")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    p.add_argument("--render", type=Path, metavar="JSON", help="only redraw the Markdown and PNG of a saved run")
    args = p.parse_args(argv)
    base = PRESETS[args.mode or "full"]
    plan = base.replace(combos=args.combos, levels=args.levels, reps=args.reps, tokens=args.tokens,
                        interval_ms=args.interval_ms, probes=args.probes, phases=args.phases,
                        workers=args.workers and tuple(sorted(set(args.workers))), workers_streams=args.workers_streams,
                        workers_tokens=args.workers_tokens, workers_seconds=args.workers_seconds,
                        workers_source=args.workers_source, overload_capacity=args.overload_capacity,
                        store_conversations=args.store_conversations, store_turns=args.store_turns,
                        sse_upstream=args.sse_upstream, nginx=args.nginx, relay_uvloop=args.relay_uvloop)
    bad = [c for c in plan.combos if c not in KNOWN_COMBOS] + [x for x in plan.phases if x not in PHASES]
    bad += [e for e in args.engines or () if e not in ENGINES]
    if args.engines and not bad:
        plan = plan.replace(combos=with_engines(plan.combos, args.engines))
    if (bad or not plan.combos or not plan.levels or min(plan.levels) < 1 or plan.reps < 1 or not plan.workers
            or min(plan.workers) < 1 or plan.workers_streams < 1 or plan.workers_tokens < 1
            or plan.overload_capacity < 1 or plan.store_conversations < 1 or plan.store_turns < 1):
        p.error(f"bad value(s): {', '.join(map(str, bad)) or 'empty or non-positive list'}")
    if plan.needs_redis and not args.render and (why := procs.redis_missing()):
        p.error(f"{why}; the @redis combinations and the workers phase need it "
                "(--engines memory --phases paced,ttft,burst,stop run without)")
    if args.name is None:
        args.name = plan.mode if plan == base else "adhoc"
    return plan.replace(budget_s=plan.budget_s or 2 * plan.estimate_s()), args


def _loop_factory(plan: Plan):
    if plan.harness_uvloop:
        try:
            import uvloop
            return uvloop.new_event_loop
        except ImportError:
            pass
    return None


def write(report: dict, out: Path, name: str, with_chart: bool) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.json", out / f"{name}.md"]
    png = out / f"{name}.png"
    drawn = with_chart and chart.available() and bool((report.get("paced") or {}).get("summary"))  # it plots paced runs
    if drawn:
        paths.append(chart.draw(report, png))
    report["chart"] = png.name if drawn else None
    paths[0].write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
    paths[1].write_text(render.markdown(report, report["chart"]))
    return paths


def main(argv: list[str]) -> int:
    plan, args = parse(argv)
    if args.render:
        report = orjson.loads(args.render.read_bytes())
        paths = write(report, args.render.parent, args.render.stem, not args.no_chart)
        print(render.terminal(report) + "\n\nwrote " + ", ".join(str(p) for p in paths))
        return 0
    progress = Progress(runner.steps(plan))
    try:
        with asyncio.Runner(loop_factory=_loop_factory(plan)) as loop:
            report = loop.run(runner.run(plan, progress))
    except TimeoutError:
        progress.close()
        print(f"matrix bench: stopped after its time budget of {plan.budget_s:.0f} s", file=sys.stderr)
        return 1
    except (RuntimeError, OSError) as exc:
        progress.close()
        print(f"matrix bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close()
        return 130
    progress.close()
    paths = write(report, args.out, args.name, not args.no_chart)
    print(render.terminal(report))
    print("\nwrote " + ", ".join(str(p) for p in paths))
    return 0
