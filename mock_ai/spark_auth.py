"""The server side of Spark's signed URL: check `authorization`, `date` and skew like the vendor gateway.

Written apart from `upstreams/spark_auth.py` on purpose: two independent implementations
that agree are evidence of interop; one shared helper would agree with itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qs

MAX_SKEW_S = 300.0  # vendor doc: the date may be at most 300 s off the server clock
_REQUIRED_HEADERS = ("host", "date", "request-line")
# `name="value"` pairs of the origin string; the first may carry the scheme, `hmac username`.
_PAIR = re.compile(r'\s*(?:hmac\s+)?([A-Za-z_-]+)\s*=\s*"([^"]*)"\s*(?:,|$)')


class SignatureError(Exception):
    """The handshake is refused; `str(exc)` is the reason after "HMAC signature cannot be verified: "."""

    def body(self) -> dict:
        return {"message": f"HMAC signature cannot be verified: {self}"}


def verify(raw_query: str, host: str, path: str, keys: dict[str, str], now: datetime) -> str:
    """Check a signed URL's query; return the API key it was signed for, or raise SignatureError.

    `raw_query` is undecoded: it is parsed here with `+` as space, the way Python's
    `urlencode` and Go's `url.Values.Encode` write the date. `host` is the request's Host
    header and `path` its raw path, the two things the client signed. `keys` maps each
    known API key to its secret.
    """
    query = {name: values[0] for name, values in parse_qs(raw_query, keep_blank_values=True).items()}
    date = query.get("date", "")
    if not _fresh(date, now):
        raise SignatureError("a valid date or x-date header is required for HMAC Authentication")
    params = _origin_params(query.get("authorization", ""))
    api_key = params.get("api_key", params.get("username"))
    if api_key not in keys:
        raise SignatureError("fail to retrieve credential")
    if params.get("algorithm", "").lower() != "hmac-sha256":
        raise SignatureError(f"algorithm {params.get('algorithm')!r} not supported")
    headers = params.get("headers", "").split()
    for name in _REQUIRED_HEADERS:
        if name not in headers:
            raise SignatureError(f"enforced header '{name}' not used for signature creation")
    # The signed text lists the headers in the order the client declared them.
    values = {"host": f"host: {host}", "date": f"date: {date}", "request-line": f"GET {path} HTTP/1.1"}
    try:
        signed = "\n".join(values[name] for name in headers)
    except KeyError as exc:
        raise SignatureError(f"header {exc.args[0]!r} is not available for signing") from None
    expected = hmac.new(keys[api_key].encode(), signed.encode(), hashlib.sha256).digest()
    try:
        given = base64.b64decode(params.get("signature", ""), validate=True)
    except binascii.Error:
        raise SignatureError("signature is not base64") from None
    if not hmac.compare_digest(expected, given):
        raise SignatureError("HMAC signature does not match")
    return api_key


def _fresh(date: str, now: datetime) -> bool:
    """RFC 1123 date within MAX_SKEW_S of now; `GMT` and `UTC` zone names both count as UTC."""
    try:
        when = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return False
    if when.tzinfo is None:  # email.utils reads "-0000" as "zone unknown"; the vendor means UTC
        return False
    return abs((now - when).total_seconds()) <= MAX_SKEW_S


def _origin_params(authorization: str) -> dict[str, str]:
    try:
        origin = base64.b64decode(authorization, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise SignatureError("authorization is not base64") from None
    pairs = dict(_PAIR.findall(origin))
    if not pairs:
        raise SignatureError("authorization has no credential")
    return pairs
