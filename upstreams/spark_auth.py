"""iFlytek Spark's signed WebSocket URL (HMAC-SHA256 over host, date and request line)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from email.utils import formatdate
from urllib.parse import urlencode, urlsplit


def signature(api_secret: str, host: str, date: str, path: str, method: str = "GET") -> str:
    """base64(HMAC-SHA256(secret, "host: ..\\ndate: ..\\nGET /path HTTP/1.1")), per the vendor doc."""
    to_sign = f"host: {host}\ndate: {date}\n{method} {path} HTTP/1.1"
    digest = hmac.new(api_secret.encode(), to_sign.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def authorization(api_key: str, sig: str) -> str:
    origin = (f'api_key="{api_key}", algorithm="hmac-sha256", '
              f'headers="host date request-line", signature="{sig}"')
    return base64.b64encode(origin.encode()).decode()


def signed_url(url: str, api_key: str, api_secret: str, date: str | None = None) -> str:
    """The endpoint URL with `authorization`, `date` and `host` query parameters."""
    parts = urlsplit(url)
    date = date or formatdate(usegmt=True)  # RFC 1123, GMT; the server allows 300 s of skew
    sig = signature(api_secret, parts.netloc, date, parts.path or "/")
    query = urlencode({"authorization": authorization(api_key, sig), "date": date, "host": parts.netloc})
    return f"{url}?{query}"
