"""Client-facing endpoints: SSE (sse.py) and WebSocket (ws.py), the mirror of upstreams/."""
