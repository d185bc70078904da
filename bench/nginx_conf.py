"""The nginx reference's configuration: one worker, no access log, unbuffered SSE and WS tunnels."""

from __future__ import annotations

from pathlib import Path

TEMPLATE = """\
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    upstream mock {{ server {upstream}; keepalive 256; }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_buffering off;
            # Host passes through so the Spark mock checks the signature the client made.
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def render(prefix: Path, host: str, port: int, upstream: str) -> str:
    return TEMPLATE.format(prefix=prefix, host=host, port=port, upstream=upstream)
