"""The `matrix` command: serve the relay, run the mock providers, a demo of both, a chat client."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import ssl
import sys

from .config import COMBOS, load
from .errors import ConfigError

EPILOG = """combinations (downstream-upstream): sse-sse, sse-ws, ws-sse, ws-ws.
Start with `matrix demo`, then in another terminal: matrix chat "你好" --downstream ws --upstream spark
A conversation the relay remembers: matrix chat --conversation ID [PROMPT]; list them: matrix conversations"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="matrix", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the relay (SSE and WS downstreams, all upstreams)",
                                description="Run the relay. Config: --config FILE, else ./matrix.toml, else "
                                            "built-in defaults pointing at the mock providers on :9100; "
                                            "MATRIX_<SECTION>__<KEY> environment variables override the file.")
    _relay_options(serve)
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="run N relay processes on one port; needs [engine] kind = \"redis\" (they share streams)")
    serve.add_argument("--reuse-port", action="store_true",
                       help="bind with SO_REUSEPORT, so that several relays share the port (what each worker does)")

    mock = commands.add_parser("mock", help="run the mock AI providers (Spark WS, Baidu agent SSE, OpenAI SSE, "
                                            "Anthropic SSE, OpenAI Realtime WS)",
                               description="Serve protocol-faithful mock providers under the vendors' paths: "
                                           "/v3.5/chat (Spark WS), /assistant/conversation (Baidu agent SSE), "
                                           "/v1/chat/completions (OpenAI SSE), /v1/messages (Anthropic SSE), "
                                           "/v1/realtime (OpenAI Realtime WS), and GET /_mock/stats. A line "
                                           "'#mock tokens=40 interval_ms=20 fault=drop_after:5' in the last user "
                                           "message scripts one answer.")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=9100)
    _mock_defaults(mock)
    tls = mock.add_argument_group("TLS (serve HTTPS and WSS, to rehearse a provider behind a private CA)")
    tls.add_argument("--tls-cert", help="PEM certificate (chain) to serve")
    tls.add_argument("--tls-key", help="its PEM private key")
    tls.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    tls.add_argument("--tls-throwaway", metavar="DIR",
                     help="make a private CA and a certificate for localhost/127.0.0.1 in DIR and serve it; "
                          "clients trust DIR/ca.pem")

    demo = commands.add_parser("demo", help="mock providers + relay in one process (what `make demo` runs)",
                               description="Run the mock providers on --mock-port and the relay on --port, "
                                           "then open the printed URL. Ctrl-C stops both.")
    _relay_options(demo)
    demo.add_argument("--mock-port", type=int, default=9100)
    _mock_defaults(demo)

    chat = commands.add_parser("chat", help="stream answers through the relay and time them; continue a conversation",
                               description="Send PROMPT through a running relay and print tokens as they "
                                           "arrive, then time to first token and tokens/s. With --conversation "
                                           "the relay keeps the history and sends it to the provider. Without "
                                           "PROMPT, read prompts from stdin, one per line (a line ending in \\ "
                                           "continues), until EOF or /quit, all in one conversation.")
    chat.add_argument("prompt", nargs="?", help="one prompt; leave it out for an interactive conversation")
    chat.add_argument("--conversation", default=None, metavar="ID",
                      help="continue (or start) the conversation ID (1-64 of A-Z a-z 0-9 _ -); without it the "
                           "interactive loop makes a new one and prints its id")
    chat.add_argument("--downstream", choices=("sse", "ws"), default="sse", help="client-side transport")
    chat.add_argument("--upstream", default=None, help="upstream name from GET /v1/upstreams (default: the relay's)")
    chat.add_argument("--trace", action="store_true",
                      help="also print both hops' raw frames: provider frames in/out, and client frames")
    _client_options(chat)

    conversations = commands.add_parser("conversations", help="list your conversations, or print one",
                                        description="List the conversations the relay keeps for you (your API "
                                                    "key, or your address without keys), newest first; with ID, "
                                                    "print its messages.")
    conversations.add_argument("id", nargs="?", metavar="ID", help="a conversation to print")
    conversations.add_argument("--limit", type=int, default=20, help="how many to list (1-100, default 20)")
    conversations.add_argument("--cursor", default=None, help="continue a listing where the last one stopped")
    _client_options(conversations)

    commands.add_parser("bench", help="compare the latency and CPU cost of the four combinations",
                        add_help=False, description="See `matrix bench --help`.")

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark owns its own options
        from bench.cli import main as bench_main
        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        if args.command in ("chat", "conversations"):
            from . import client
            return asyncio.run(client.chat_command(args) if args.command == "chat"
                               else client.conversations_command(args))
        if args.command == "serve" and args.workers != 1:
            return _workers(args, argv)
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_serve(args))
    except ConfigError as exc:
        print(f"matrix: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"matrix: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _loop_factory():
    """uvloop when installed: 8-16 % less relay CPU per token in `matrix bench` (MATRIX_UVLOOP=0 to opt out)."""
    if os.environ.get("MATRIX_UVLOOP", "1") != "0":
        try:
            import uvloop
            return uvloop.new_event_loop
        except ImportError:
            pass
    return None


def _workers(args: argparse.Namespace, argv: list[str]) -> int:
    import upstreams  # noqa: F401  registers the vendors' config kinds, as creating the app does
    from .workers import supervise
    settings = _relay_settings(args)  # refuse a bad config once, here, not N times
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if settings.engine.kind != "redis":
        raise ConfigError("--workers needs [engine] kind = \"redis\": with the memory engine each worker would "
                          "hold its own streams, and a resume or stop landing on another worker would not find them")
    if not settings.server.port:
        raise ConfigError("--workers needs a fixed port (server.port or --port), not 0")
    rest = [a for i, a in enumerate(argv[1:]) if not (a.startswith("--workers") or argv[i] == "--workers")]
    return supervise(rest, args.workers)


def _relay_settings(args: argparse.Namespace, upstreams_port: int | None = None):
    # A config without [upstreams] reaches the bundled mocks: the one `matrix demo` just
    # started, or `matrix mock` on its default port.
    from mock_ai import DEFAULT_PORT, relay_upstreams
    mocks = relay_upstreams(f"127.0.0.1:{upstreams_port or DEFAULT_PORT}")
    return load(args.config, defaults={"upstreams": mocks}, server__combo=args.combo,
                server__host=args.host, server__port=args.port)


def _relay_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="TOML file (default: ./matrix.toml if present)")
    p.add_argument("--combo", choices=COMBOS, default=None, help="pin one combination, e.g. ws-sse")
    p.add_argument("--host", default=None, help="address to bind (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port to bind (default from config: 8080)")


def _client_options(p: argparse.ArgumentParser) -> None:
    """Where the relay is and how to be let in: shared by `chat` and `conversations`."""
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the relay's base URL")
    p.add_argument("--key", default=os.environ.get("MATRIX_API_KEY"),
                   help="API key when the relay has [auth] keys (default: $MATRIX_API_KEY)")
    p.add_argument("--ca-file", default=None,
                   help="PEM CA bundle to trust for an https:// relay, besides the system's")
    p.add_argument("--client-cert", default=None, help="PEM client certificate, for a relay with tls_client_ca")
    p.add_argument("--client-key", default=None, help="its PEM private key")


def _mock_defaults(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", type=int, default=None, help="tokens per answer (default 12)")
    p.add_argument("--interval-ms", type=float, default=None, help="delay between tokens (default 20)")
    p.add_argument("--first-token-ms", type=float, default=None, help="delay before the first token")


def _mock_tls(args: argparse.Namespace, mock):
    """The mock's server context from --tls-* (None: plain HTTP), hellos counted in its stats."""
    from mock_ai.state import STATE
    from mock_ai.tls import server_context, throwaway
    cert, key = args.tls_cert, args.tls_key
    if args.tls_throwaway:
        try:
            cert, key, ca = throwaway(args.tls_throwaway)
        except ImportError:
            raise ConfigError("--tls-throwaway needs the trustme package (pip install trustme)") from None
        print(f"throwaway CA: {ca}  (trust it: ca_file = \"{ca}\", or matrix chat --ca-file {ca})", flush=True)
    if not cert:
        return None
    if not key:
        raise ConfigError("--tls-cert needs --tls-key")
    try:
        return server_context(cert, key, args.tls_client_ca, stats=mock[STATE].stats)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the mock's TLS files: {getattr(exc, 'reason', None) or exc}") from None


async def _serve(args: argparse.Namespace) -> int:
    from .app import create_app, run_until_stopped, server_ssl_context, start_site
    from .logs import configure as configure_logs

    runners = []
    if args.command in ("mock", "demo"):
        from mock_ai.app import create_app as create_mock
        defaults = {k: v for k, v in {"tokens": args.tokens, "interval_ms": args.interval_ms,
                                      "first_token_ms": args.first_token_ms}.items() if v is not None}
        mock_port = args.port if args.command == "mock" else args.mock_port
        mock_host = args.host if args.command == "mock" else "127.0.0.1"
        mock = create_mock(defaults=defaults)
        context = _mock_tls(args, mock) if args.command == "mock" else None
        runner, port = await start_site(mock, mock_host, mock_port, ssl_context=context)
        runners.append(runner)
        print(f"mock providers on {'https' if context else 'http'}://{mock_host}:{port}  (stats: /_mock/stats)",
              flush=True)
    if args.command in ("serve", "demo"):
        settings = _relay_settings(args, port if args.command == "demo" else None)
        configure_logs(settings.log.level, settings.log.format)
        context = server_ssl_context(settings.server)
        runner, port = await start_site(create_app(settings), settings.server.host, settings.server.port,
                                        settings.server.header_timeout_s, ssl_context=context,
                                        reuse_port=getattr(args, "reuse_port", False))
        runners.append(runner)
        combo = settings.server.combo or "all four combinations"
        scheme = "https" if context else "http"
        print(f"relay on {scheme}://{settings.server.host}:{port}/  ({combo}; upstreams: "
              f"{', '.join(settings.upstreams)})", flush=True)
        if args.command == "demo":
            print(f"demo page: {scheme}://{settings.server.host}:{port}/   Ctrl-C stops everything.", flush=True)
    # Everything loaded so far lives as long as the process: keep it out of the
    # collector's generations so a full collection never walks it mid-stream.
    gc.freeze()
    await run_until_stopped(*runners)
    return 0
