"""Huawei Cloud AK/SK request signing (``SDK-HMAC-SHA256``), written from the public algorithm.

Byte for byte what ``huaweicloudsdkcore.signer.signer.Signer`` produces (the tests use it as an
oracle): canonical request = method, path, query, headers, signed names, payload hash; string
to sign = algorithm, ``X-Sdk-Date``, hash of the canonical request; signature = HMAC-SHA256(SK).
Pure functions; the client signs every request and the simulator verifies every request.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import quote, unquote

__all__ = [
    "ALGORITHM",
    "parse_authorization",
    "parse_sdk_date",
    "sdk_date",
    "sign_headers",
    "verify",
]

ALGORITHM = "SDK-HMAC-SHA256"

_EMPTY_HASH = hashlib.sha256(b"").hexdigest()
_DATE_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
# Headers sign_headers adds itself: a caller passing them is a bug, not something to sign.
_ADDED = frozenset(("x-sdk-date", "authorization"))
# The official signer uses this header's value as the payload hash when present (it sets it
# to UNSIGNED-PAYLOAD for content types other than JSON/BSON).
_CONTENT_HASH = "x-sdk-content-sha256"


def sdk_date(now: datetime) -> str:
    """``now`` as ``X-Sdk-Date`` wants it: UTC ``YYYYMMDDTHHMMSSZ``. ``now`` must be aware."""
    global _last_date
    if now.utcoffset() is None:
        raise ValueError("sdk_date needs a timezone-aware datetime")
    second = math.floor(now.timestamp())
    last_second, last_text = _last_date
    if second == last_second:  # a run signs hundreds of requests a second: format once
        return last_text
    t = now.astimezone(UTC)
    text = f"{t.year:04d}{t.month:02d}{t.day:02d}T{t.hour:02d}{t.minute:02d}{t.second:02d}Z"
    _last_date = (second, text)
    return text


_last_date: tuple[int | None, str] = (None, "")  # swapped whole: safe across threads


def parse_sdk_date(value: str) -> datetime:
    """Parse an ``X-Sdk-Date`` value into an aware UTC datetime; ValueError when malformed."""
    if _DATE_RE.fullmatch(value) is None:
        raise ValueError(f"X-Sdk-Date must look like YYYYMMDDTHHMMSSZ, got {value[:32]!r}")
    return datetime(
        int(value[0:4]),
        int(value[4:6]),
        int(value[6:8]),
        int(value[9:11]),
        int(value[11:13]),
        int(value[13:15]),
        tzinfo=UTC,
    )


@lru_cache(maxsize=1024)
def _canonical_uri(path: str) -> str:
    # Cached: a run sends thousands of requests to a handful of paths.
    encoded = "/".join([quote(segment, safe="~") for segment in unquote(path).split("/")])
    return encoded if encoded.endswith("/") else encoded + "/"


def _canonical_query(query: Sequence[tuple[str, str]]) -> str:
    if not query:
        return ""
    return "&".join([f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in sorted(query)])


def _signature(
    sk: str,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    header_lines: Sequence[str],
    names: str,
    payload_hash: str,
    date: str,
) -> str:
    header_block = "\n".join(header_lines)
    canonical = (
        f"{method.upper()}\n{_canonical_uri(path)}\n{_canonical_query(query)}\n"
        f"{header_block}\n\n{names}\n{payload_hash}"
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = f"{ALGORITHM}\n{date}\n{digest}"
    mac = _keyed_hmac(sk).copy()
    mac.update(to_sign.encode())
    return mac.hexdigest()


@lru_cache(maxsize=8)
def _keyed_hmac(sk: str) -> hmac.HMAC:
    # Copying a keyed HMAC skips hashing the key padding again (bench/results.md section 10).
    return hmac.new(sk.encode(), digestmod=hashlib.sha256)


def _payload_hash(body: bytes, content_hash: str | None) -> str:
    if not body:
        return _EMPTY_HASH
    if content_hash:
        return content_hash
    return hashlib.sha256(body).hexdigest()


def sign_headers(
    *,
    ak: str,
    sk: str,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
) -> dict[str, str]:
    """Sign a request: a new dict of ``headers`` plus ``X-Sdk-Date`` and ``Authorization``.

    ``headers`` are the headers to sign and send (Host, X-Project-Id, Content-Type with a
    body); names containing ``_`` are sent but not signed, as the official signer does.
    ``path`` is the raw (percent-encoded) path, ``query`` the decoded query pairs.
    """
    date = sdk_date(now)
    canonical: dict[str, str] = {"x-sdk-date": date}
    for name, value in headers.items():
        low = name.lower()
        if low in _ADDED:
            raise ValueError(f"headers must not contain {name}: sign_headers adds it")
        canonical[low] = value.strip()
    if len(canonical) != len(headers) + 1:
        raise ValueError("headers contain the same name twice (names are case-insensitive)")
    if "host" not in canonical:
        raise ValueError("headers must contain Host")
    names = sorted([n for n in canonical if "_" not in n])
    signed_names = ";".join(names)
    signature = _signature(
        sk,
        method,
        path,
        query,
        [f"{n}:{canonical[n]}" for n in names],
        signed_names,
        _payload_hash(body, canonical.get(_CONTENT_HASH)),
        date,
    )
    signed = dict(headers)
    signed["X-Sdk-Date"] = date
    signed["Authorization"] = (
        f"{ALGORITHM} Access={ak}, SignedHeaders={signed_names}, Signature={signature}"
    )
    return signed


def parse_authorization(value: str) -> tuple[str, list[str], str]:
    """Split an ``Authorization`` header into (access key, signed header names, signature).

    Raises ValueError saying what is wrong; the message never repeats the whole header.
    """
    prefix = ALGORITHM + " "
    if not value.startswith(prefix):
        raise ValueError(f"Authorization must start with {prefix!r}")
    fields: dict[str, str] = {}
    for part in value[len(prefix) :].split(","):
        key, sep, field = part.strip().partition("=")
        if not sep or not field:
            raise ValueError(f"Authorization field {key[:32]!r} has no value")
        if key not in ("Access", "SignedHeaders", "Signature"):
            raise ValueError(f"Authorization has an unknown field {key[:32]!r}")
        if key in fields:
            raise ValueError(f"Authorization has {key} twice")
        fields[key] = field
    missing = {"Access", "SignedHeaders", "Signature"} - fields.keys()
    if missing:
        raise ValueError(f"Authorization lacks {', '.join(sorted(missing))}")
    names = fields["SignedHeaders"].split(";")
    if "" in names:
        raise ValueError("Authorization SignedHeaders has an empty name")
    if _SIGNATURE_RE.fullmatch(fields["Signature"]) is None:
        raise ValueError("Authorization Signature must be 64 lowercase hex digits")
    return fields["Access"], names, fields["Signature"]


def verify(
    *,
    sk: str,
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    signed_headers: Sequence[str],
    signature: str,
) -> bool:
    """Whether ``signature`` is right for this request as the server received it.

    ``headers`` are the received headers (X-Sdk-Date included), looked up case-insensitively;
    ``signed_headers`` and ``signature`` come from :func:`parse_authorization`. False when a
    signed header or a valid X-Sdk-Date is missing. Checking the date's skew is the caller's.
    """
    received = {name.lower(): value for name, value in headers.items()}
    date = received.get("x-sdk-date", "").strip()
    try:
        parse_sdk_date(date)
    except ValueError:
        return False
    lines: list[str] = []
    for name in signed_headers:
        value = received.get(name.lower())
        if value is None:
            return False
        lines.append(f"{name}:{value.strip()}")
    content_hash = None
    if _CONTENT_HASH in signed_headers:
        content_hash = received[_CONTENT_HASH].strip()
    expected = _signature(
        sk,
        method,
        path,
        query,
        lines,
        ";".join(signed_headers),
        _payload_hash(body, content_hash),
        date,
    )
    return hmac.compare_digest(expected, signature)
