"""A real nginx for tests: runs as this user from a temporary prefix, one site config, stopped by PID."""

from __future__ import annotations

import asyncio
import shutil
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from clients import TIMEOUT

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)

# The main config around a site file (deploy/nginx*.conf): every path nginx writes is under
# the test's directory, so it needs no root and leaves nothing behind.
MAIN = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 128; }}
http {{
    # Which replica served each request: the cluster tests check that reconnects spread.
    log_format matrix '$remote_addr "$request" $status upstream=$upstream_addr';
    access_log {tmp}/access.log matrix;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/matrix.conf;
}}
"""


@asynccontextmanager
async def nginx_running(site: str, port: int, tmp_path: Path) -> AsyncIterator[str]:
    """Run nginx with `site` (listening on 127.0.0.1:`port`) from `tmp_path`; yields its base URL."""
    assert NGINX is not None, "nginx is not installed (apt-get install nginx-light)"
    (tmp_path / "matrix.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(MAIN.format(tmp=tmp_path))
    args = [NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    check = await asyncio.create_subprocess_exec(*args, "-t", stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(check.communicate(), TIMEOUT)
    assert check.returncode == 0, output.decode()
    # No daemon and no master: the process we start is the one serving, so its PID stops it.
    proc = await asyncio.create_subprocess_exec(*args, "-g", "daemon off; master_process off;",
                                                stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:  # wait until nginx accepts connections
                assert proc.returncode is None, (await proc.stderr.read()).decode()
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    await writer.wait_closed()
                    break
                except OSError:
                    await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
