"""The two ways to authenticate to DLI: an IAM token, or an AK/SK signature per request.

Both implement ``batchsub.protocols.Auth``. Neither ever puts its secret in a repr or in
``describe()``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from yarl import URL

from batchsub import signer

__all__ = ["JSON_CONTENT_TYPE", "AkSkAuth", "TokenAuth"]

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
SIGNATURE_VALIDITY = 15 * 60  # seconds an X-Sdk-Date may be from the server's clock
CLOCK_SKEW_HINT = 5 * 60  # a 401 says the clocks differ from this many seconds on


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TokenAuth:
    """An IAM token sent as ``X-Auth-Token`` (valid 24 h; getting one is not our job)."""

    __slots__ = ("_origin", "_token")

    def __init__(self, token: str, *, origin: str = "BATCHSUB_AUTH_TOKEN") -> None:
        if not token:
            raise ValueError("TokenAuth needs a non-empty token")
        self._token = token
        self._origin = origin

    def headers(self, method: str, url: URL, body: bytes) -> dict[str, str]:
        """The token header; it does not depend on the request."""
        return {"X-Auth-Token": self._token}

    def describe(self) -> str:
        """Where the credential came from, without the token."""
        return f"token from {self._origin}"

    def refusal_hint(self, server_time: datetime) -> str | None:
        """A token does not depend on the clock: nothing to add."""
        return None

    def __repr__(self) -> str:
        return "TokenAuth(token=<hidden>)"


class AkSkAuth:
    """Signs each request with an access key / secret key (``SDK-HMAC-SHA256``).

    ``headers()`` returns every header the signature covers (Host, Content-Type with a body,
    X-Project-Id, X-Sdk-Date, Authorization): send them unchanged with the same URL and body.
    ``clock`` returns an aware datetime (UTC now by default); tests pass a fixed one.
    """

    __slots__ = ("_ak", "_clock", "_project_id", "_sk")

    def __init__(
        self,
        ak: str,
        sk: str,
        project_id: str,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not ak or not sk or not project_id:
            raise ValueError("AkSkAuth needs a non-empty AK, SK and project id")
        self._ak = ak
        self._sk = sk
        self._project_id = project_id
        self._clock = clock or _utc_now

    def headers(self, method: str, url: URL, body: bytes) -> dict[str, str]:
        """The signed headers for this exact method, URL (path and query) and body."""
        # The Host aiohttp sends itself: host, plus :port unless it is the scheme's default.
        host = url.host_port_subcomponent
        if host is None:
            raise ValueError("AkSkAuth needs an absolute URL")
        to_sign = {"Host": host, "X-Project-Id": self._project_id}
        if body:
            to_sign["Content-Type"] = JSON_CONTENT_TYPE
        return signer.sign_headers(
            ak=self._ak,
            sk=self._sk,
            method=method,
            path=url.raw_path,
            query=tuple(url.query.items()) if url.raw_query_string else (),
            headers=to_sign,
            body=body,
            now=self._clock(),
        )

    def refusal_hint(self, server_time: datetime) -> str | None:
        """The clocks, when they differ enough that a signature may be taken for too old."""
        skew = abs((server_time - self._clock()).total_seconds())
        if skew <= CLOCK_SKEW_HINT:
            return None
        return (
            f"the server's clock differs from this machine's by {round(skew / 60)} min; "
            f"AK/SK signatures are valid for {SIGNATURE_VALIDITY // 60} min: check NTP"
        )

    def describe(self) -> str:
        """Which access key this is (its first 4 characters only), never the SK."""
        return f"AK/SK HUAWEICLOUD_SDK_AK={self._ak[:4]}…"

    def __repr__(self) -> str:
        return f"AkSkAuth(ak='{self._ak[:4]}…', project_id={self._project_id!r})"
