"""Spark's signed URL against the vendor's own worked example (research file test vector)."""

from urllib.parse import parse_qs, urlsplit

from upstreams.spark_auth import signature, signed_url

SECRET = "MjlmNzkzNmZkMDQ2OTc0ZDdmNGE2ZTZi"
KEY = "addd2272b6d8b7c8abdd79531420ca3b"
DATE = "Fri, 05 May 2023 10:43:39 GMT"
AUTHORIZATION = ("YXBpX2tleT0iYWRkZDIyNzJiNmQ4YjdjOGFiZGQ3OTUzMTQyMGNhM2IiLCBhbGdvcml0aG09ImhtYWMtc2hhMjU2Iiwg"
                 "aGVhZGVycz0iaG9zdCBkYXRlIHJlcXVlc3QtbGluZSIsIHNpZ25hdHVyZT0iejVnSGR1M3B4VlY0QURNeWs0Njd3T1dEUTlx"
                 "NkJRelIzbmZNVGpjL0RhUT0i")


def test_signature_matches_vendor_example():
    """The HMAC-SHA256 signature equals the vendor doc's worked example."""
    assert signature(SECRET, "spark-api.xf-yun.com", DATE, "/v1.1/chat") == \
        "z5gHdu3pxVV4ADMyk467wOWDQ9q6BQzR3nfMTjc/DaQ="


def test_signed_url_matches_vendor_query():
    """The signed URL's query is exactly the vendor example's authorization, date and host."""
    url = signed_url("wss://spark-api.xf-yun.com/v1.1/chat", KEY, SECRET, DATE)
    assert url.split("?")[1] == (f"authorization={AUTHORIZATION}"
                                 "&date=Fri%2C+05+May+2023+10%3A43%3A39+GMT&host=spark-api.xf-yun.com")
    query = parse_qs(urlsplit(url).query)
    assert query["date"] == [DATE] and query["host"] == ["spark-api.xf-yun.com"]
