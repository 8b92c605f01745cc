"""Authentication as the API Gateway in front of DLI does it: IAM token or AK/SK signature."""

from __future__ import annotations

from datetime import UTC

from aiohttp import web

from batchsub import signer
from batchsub.simulator.config import SimulatorConfig
from batchsub.simulator.iam import IAM, TOKEN_MUST_BE_UPDATED

MAX_SKEW = 15 * 60.0  # seconds between X-Sdk-Date and the server clock


def authenticate(config: SimulatorConfig, request: web.Request, body: bytes) -> str | None:
    """None when the request carries a valid credential, else which part failed.

    The reason never contains a token, an SK or a signature.
    """
    headers = request.headers
    token = headers.get("X-Auth-Token")
    authorization = headers.get("Authorization")
    if token is not None and token in config.tokens:
        return None
    issued = request.app[IAM].check(token) if token is not None and IAM in request.app else None
    if issued is not None:
        return None if issued else TOKEN_MUST_BE_UPDATED
    if authorization is None:
        if token is not None:
            return "the X-Auth-Token is invalid or expired"
        return "missing X-Auth-Token or Authorization header"
    return _check_signature(config, request, authorization, body)


def _check_signature(
    config: SimulatorConfig, request: web.Request, authorization: str, body: bytes
) -> str | None:
    try:
        ak, signed_headers, signature = signer.parse_authorization(authorization)
    except ValueError:
        return "malformed Authorization header"
    sk = config.aksk.get(ak)
    if sk is None:
        return "unknown access key (AK)"
    sdk_date = request.headers.get("X-Sdk-Date")
    if sdk_date is None:
        return "missing X-Sdk-Date header"
    try:
        when = signer.parse_sdk_date(sdk_date)
    except ValueError:
        return "malformed X-Sdk-Date header"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if abs(config.wall_clock() - when.timestamp()) > MAX_SKEW:
        return "X-Sdk-Date is more than 15 minutes away from the server time"
    ok = signer.verify(
        sk=sk,
        method=request.method,
        path=request.rel_url.raw_path,
        query=list(request.query.items()),
        headers=request.headers,
        body=body,
        signed_headers=signed_headers,
        signature=signature,
    )
    return None if ok else "the AK/SK signature does not match"
