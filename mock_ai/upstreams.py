"""The relay's `[upstreams]` tables that reach these mocks: what `matrix demo` and the tests use."""

from __future__ import annotations

from .state import Credentials


def relay_upstreams(base: str = "127.0.0.1:9100", credentials: Credentials = Credentials()) -> dict[str, dict]:
    """One upstream per mock vendor at `base` (host:port), with the credentials the mock accepts."""
    c = credentials
    return {
        "spark": {"kind": "spark", "url": f"ws://{base}/v3.5/chat", "domain": "generalv3.5",
                  "app_id": c.spark_app_id, "api_key": c.spark_api_key, "api_secret": c.spark_api_secret},
        "baidu": {"kind": "baidu-agent", "url": f"http://{base}/assistant/conversation",
                  "app_id": c.baidu_app_id, "secret_key": c.baidu_secret_key},
        "openai": {"kind": "openai", "url": f"http://{base}/v1/chat/completions",
                   "api_key": c.openai_api_key, "model": "qwen-plus"},
        "anthropic": {"kind": "anthropic", "url": f"http://{base}/v1/messages",
                      "api_key": c.anthropic_api_key, "model": "claude-mock"},
        "realtime": {"kind": "openai-realtime", "url": f"ws://{base}/v1/realtime",
                     "api_key": c.openai_api_key, "model": "gpt-realtime"},
    }
