"""Mock AI providers (Spark, Baidu agent, OpenAI, Anthropic, OpenAI Realtime), scriptable by `#mock` lines."""

from .app import DEFAULT_PORT, create_app, running, serve
from .script import DirectiveError, Fault, Script
from .state import Credentials
from .upstreams import relay_upstreams

__all__ = ["DEFAULT_PORT", "Credentials", "DirectiveError", "Fault", "Script", "create_app", "relay_upstreams", "running", "serve"]
