"""The AK/SK signer, checked against the official huaweicloudsdkcore signer as an oracle."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from hypothesis import given, settings
from hypothesis import strategies as st

from batchsub import signer

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
SK = "sk-0123456789abcdef"
AK = "AKIDEXAMPLE"


def oracle(
    *,
    ak: str,
    sk: str,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    date: str,
) -> dict[str, str]:
    """The headers the official signer produces (it reads the time from X-Sdk-Date)."""
    request = SdkRequest(
        method=method,
        schema="https",
        host="unused.example.com",
        resource_path=path,
        query_params=list(query),
        header_params={**headers, "X-Sdk-Date": date},
        body=body,
    )
    signed: dict[str, str] = Signer(BasicCredentials(ak, sk)).sign(request).header_params
    return signed


def sign(
    method: str = "POST",
    path: str = "/v1.0/p1/streaming/flink-jobs",
    query: Sequence[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None,
    body: bytes = b'{"name": "j1"}',
    sk: str = SK,
) -> dict[str, str]:
    if headers is None:
        headers = {
            "Host": "dli.example.com",
            "X-Project-Id": "p1",
            "Content-Type": "application/json;charset=UTF-8",
        }
    return signer.sign_headers(
        ak=AK, sk=sk, method=method, path=path, query=query, headers=headers, body=body, now=NOW
    )


def check(
    signed: Mapping[str, str],
    *,
    method: str = "POST",
    path: str = "/v1.0/p1/streaming/flink-jobs",
    query: Sequence[tuple[str, str]] = (),
    body: bytes = b'{"name": "j1"}',
    sk: str = SK,
) -> bool:
    _, names, signature = signer.parse_authorization(signed["Authorization"])
    return signer.verify(
        sk=sk,
        method=method,
        path=path,
        query=query,
        headers=signed,
        body=body,
        signed_headers=names,
        signature=signature,
    )


# --- generated requests -------------------------------------------------------------------

ODD = "/%~+ &=?#;:@!$'()*,é日本\u00a0\t"
segment = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(ODD), max_size=8)
hexes = st.sampled_from(["%2F", "%20", "%7E", "%25", "%e6%97%a5", "%zz", "%"])
paths = st.builds(
    lambda parts, trailing: "/" + "/".join(parts) + ("/" if trailing else ""),
    st.lists(st.one_of(segment, hexes, segment.map(lambda s: s + "%41")), max_size=5),
    st.booleans(),
)
texts = st.text(st.characters(codec="utf-8"), max_size=10)
queries = st.lists(st.tuples(texts, texts), max_size=5)
header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,15}", fullmatch=True)
header_values = st.builds(
    lambda pre, mid, post: pre + mid + post,
    st.sampled_from(["", " ", "  ", "\t"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12),
    st.sampled_from(["", " ", "   "]),
)
RESERVED = {"host", "x-sdk-date", "authorization", "content-type", "x-sdk-content-sha256"}


@st.composite
def requests(draw: st.DrawFn) -> dict[str, object]:
    """A request: method, path, query, headers (some with '_'), maybe a JSON body."""
    headers = {"Host": draw(st.sampled_from(["dli.example.com", "127.0.0.1:8443", "h"]))}
    seen = set(RESERVED)
    for name, value in draw(st.lists(st.tuples(header_names, header_values), max_size=6)):
        if name.lower() not in seen:
            seen.add(name.lower())
            headers[name] = value
    body = draw(st.one_of(st.just(b""), st.binary(max_size=64)))
    if body or draw(st.booleans()):
        headers[draw(st.sampled_from(["Content-Type", "content-type"]))] = draw(
            st.sampled_from(
                ["application/json;charset=UTF-8", "application/json", "application/bson "]
            )
        )
    return {
        "method": draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "post"])),
        "path": draw(paths),
        "query": draw(queries),
        "headers": headers,
        "body": body,
    }


@settings(max_examples=200, deadline=None)
@given(
    request=requests(),
    ak=st.from_regex(r"[A-Z0-9]{1,24}", fullmatch=True),
    sk=st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
    now=st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2099, 12, 31),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=8))]),
    ),
)
def test_authorization_equals_the_official_signer(
    request: dict[str, object], ak: str, sk: str, now: datetime
) -> None:
    method = request["method"]
    path = request["path"]
    query = request["query"]
    headers = request["headers"]
    body = request["body"]
    assert isinstance(method, str) and isinstance(path, str) and isinstance(body, bytes)
    assert isinstance(query, list) and isinstance(headers, dict)

    ours = signer.sign_headers(
        ak=ak, sk=sk, method=method, path=path, query=query, headers=headers, body=body, now=now
    )
    date = signer.sdk_date(now)
    theirs = oracle(
        ak=ak, sk=sk, method=method, path=path, query=query, headers=headers, body=body, date=date
    )

    assert ours["Authorization"] == theirs["Authorization"]
    assert ours == {**headers, "X-Sdk-Date": date, "Authorization": ours["Authorization"]}
    assert all("_" not in n for n in signer.parse_authorization(ours["Authorization"])[1])

    # The official SDK's signature verifies too, on the headers as a server receives them: it
    # sends values as latin-1 of their UTF-8 bytes, which the server decodes as UTF-8 again.
    received = {k: v.encode("iso-8859-1").decode() for k, v in theirs.items()}
    _, names, signature = signer.parse_authorization(theirs["Authorization"])
    assert signer.verify(
        sk=sk,
        method=method.upper(),
        path=path,
        query=query,
        headers=received,
        body=body,
        signed_headers=names,
        signature=signature,
    )


def test_known_vector() -> None:
    """A fixed signature computed once with the official signer: catches an oracle drift."""
    signed = signer.sign_headers(
        ak="ak",
        sk="sk",
        method="POST",
        path="/v1/a b/",
        query=[("b", "1"), ("a", "x y")],
        headers={"Host": "h", "Content-Type": "application/json"},
        body=b"{}",
        now=datetime(2024, 1, 1, tzinfo=UTC),
    )
    assert signed["Authorization"] == (
        "SDK-HMAC-SHA256 Access=ak, SignedHeaders=content-type;host;x-sdk-date, "
        "Signature=416a62f0a6c4d84d076511058f0c29315deb17ebc5cf28deabf1fec4a210511e"
    )


def test_unsigned_payload_header_matches_the_official_signer() -> None:
    """With a non-JSON content type the official signer signs X-Sdk-Content-Sha256 instead."""
    headers = {"Host": "h", "Content-Type": "application/octet-stream"}
    theirs = oracle(
        ak=AK,
        sk=SK,
        method="PUT",
        path="/up",
        query=[],
        headers=headers,
        body=b"\x00\x01",
        date=signer.sdk_date(NOW),
    )
    assert theirs["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
    ours = sign(
        method="PUT",
        path="/up",
        headers={**headers, "X-Sdk-Content-Sha256": "UNSIGNED-PAYLOAD"},
        body=b"\x00\x01",
    )
    assert ours["Authorization"] == theirs["Authorization"]
    assert check(ours, method="PUT", path="/up", body=b"\x00\x01")


# --- verify ---------------------------------------------------------------------------------


def test_verify_accepts_what_sign_headers_produced() -> None:
    query = [("limit", "100"), ("name", "a b~é")]
    signed = sign(query=query)
    assert check(signed, query=query)
    # A server sees header names in any case.
    shouted = {k if k == "Authorization" else k.upper(): v for k, v in signed.items()}
    assert check(shouted, query=query)


@pytest.mark.parametrize(
    ("change", "kwargs"),
    [
        ("body", {"body": b'{"name": "j2"}'}),
        ("empty body", {"body": b""}),
        ("path", {"path": "/v1.0/p2/streaming/flink-jobs"}),
        ("method", {"method": "PUT"}),
        ("query", {"query": [("limit", "10")]}),
        ("sk", {"sk": SK + "x"}),
    ],
)
def test_verify_rejects_a_changed_request(change: str, kwargs: dict[str, object]) -> None:
    signed = sign()
    assert check(signed)
    assert not check(signed, **kwargs), change  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value"),
    [("Host", "evil.example.com"), ("X-Project-Id", "p2"), ("X-Sdk-Date", "20240506T070810Z")],
)
def test_verify_rejects_a_changed_header(name: str, value: str) -> None:
    signed = sign()
    assert not check({**signed, name: value})


@pytest.mark.parametrize("name", ["Host", "X-Sdk-Date"])
def test_verify_rejects_a_missing_header(name: str) -> None:
    signed = sign()
    del signed[name]
    assert not check(signed)


def test_verify_rejects_a_malformed_date() -> None:
    assert not check({**sign(), "X-Sdk-Date": "2024-05-06T07:08:09Z"})


def test_unsigned_underscore_header_may_change() -> None:
    """Names with '_' are not signed (as the official signer does), so they can change."""
    headers = {"Host": "h", "X_Trace_Id": "1", "X-Project-Id": "p1"}
    signed = sign(headers=headers, body=b"")
    assert "x_trace_id" not in signed["Authorization"]
    assert check({**signed, "X_Trace_Id": "2"}, body=b"")


def test_header_values_are_trimmed() -> None:
    a = sign(headers={"Host": "h", "X-Project-Id": "  p1 "}, body=b"")
    b = sign(headers={"Host": "h", "X-Project-Id": "p1"}, body=b"")
    assert a["Authorization"] == b["Authorization"]
    assert a["X-Project-Id"] == "  p1 "


# --- input errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Project-Id": "p1"},
        {"Host": "h", "host": "h"},
        {"Host": "h", "x-sdk-date": "20240101T000000Z"},
        {"Host": "h", "Authorization": "x"},
    ],
)
def test_sign_headers_rejects_bad_headers(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        sign(headers=headers)


def test_sign_headers_does_not_mutate_its_input() -> None:
    headers = {"Host": "h", "X-Project-Id": " p1 "}
    signed = sign(headers=headers)
    assert headers == {"Host": "h", "X-Project-Id": " p1 "}
    assert signed is not headers


# --- parse_authorization ----------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    ak=st.from_regex(r"[A-Za-z0-9]{1,32}", fullmatch=True),
    names=st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True), min_size=1),
    signature=st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
)
def test_parse_authorization_round_trips(ak: str, names: list[str], signature: str) -> None:
    value = f"SDK-HMAC-SHA256 Access={ak}, SignedHeaders={';'.join(names)}, Signature={signature}"
    assert signer.parse_authorization(value) == (ak, names, signature)


def test_parse_authorization_reads_a_signed_header() -> None:
    signed = sign()
    ak, names, signature = signer.parse_authorization(signed["Authorization"])
    assert ak == AK
    assert names == ["content-type", "host", "x-project-id", "x-sdk-date"]
    assert len(signature) == 64


SIG = "0" * 64


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Bearer abc",
        f"SDK-HMAC-SM3 Access=a, SignedHeaders=host, Signature={SIG}",
        "SDK-HMAC-SHA256 Access=a, SignedHeaders=host",
        f"SDK-HMAC-SHA256 Access=a, Signature={SIG}",
        f"SDK-HMAC-SHA256 Access=, SignedHeaders=host, Signature={SIG}",
        f"SDK-HMAC-SHA256 Access=a, SignedHeaders=host;;x, Signature={SIG}",
        f"SDK-HMAC-SHA256 Access=a, SignedHeaders=host, Signature={SIG}, Extra=1",
        f"SDK-HMAC-SHA256 Access=a, Access=b, SignedHeaders=host, Signature={SIG}",
        "SDK-HMAC-SHA256 Access=a, SignedHeaders=host, Signature=xyz",
        f"SDK-HMAC-SHA256 Access=a SignedHeaders=host Signature={SIG}",
        "SDK-HMAC-SHA256 junk",
    ],
)
def test_parse_authorization_rejects_junk(value: str) -> None:
    with pytest.raises(ValueError, match="Authorization"):
        signer.parse_authorization(value)


# --- dates ------------------------------------------------------------------------------------


def test_sdk_date_is_utc() -> None:
    assert signer.sdk_date(NOW) == "20240506T070809Z"
    assert signer.sdk_date(datetime(2024, 5, 6, 15, 8, 9, tzinfo=timezone(timedelta(hours=8)))) == (
        "20240506T070809Z"
    )


def test_sdk_date_rejects_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        signer.sdk_date(datetime(2024, 5, 6))


@settings(max_examples=50, deadline=None)
@given(st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(UTC)))
def test_parse_sdk_date_round_trips(now: datetime) -> None:
    assert signer.parse_sdk_date(signer.sdk_date(now)) == now.replace(microsecond=0)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "20240506",
        "20240506T070809",
        "2024-05-06T07:08:09Z",
        "20241306T070809Z",
        "20240506T250809Z",
        "\uff120240506T070809Z",
        "20240506T070809Z ",
    ],
)
def test_parse_sdk_date_rejects_junk(value: str) -> None:
    with pytest.raises(ValueError):
        signer.parse_sdk_date(value)
