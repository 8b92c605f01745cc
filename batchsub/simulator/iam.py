"""The IAM token call, simulated: ``POST /v3/auth/tokens`` trades a password for a token.

As Huawei Cloud IAM answers it (the IAM API reference, ``iam_30_0001``): 201 with the token in the
``X-Subject-Token`` header and ``token.expires_at`` / ``issued_at`` in the body; a wrong user,
domain or password is 401 in Keystone's error shape. Tokens it issues are then accepted by the
DLI routes until they expire or are revoked (as a password change revokes them), after which
the gateway answers 401 ``APIG.0307`` "The token must be updated.".

Choices where IAM is undocumented: a project id other than the simulator's is 400; the body is
checked field by field, each problem a 400 naming the field.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from batchsub.simulator.config import SimulatorConfig

PATH = "/v3/auth/tokens"
TOKEN_MUST_BE_UPDATED = "The token must be updated."


@dataclass
class IamState:
    """Who may log in, the tokens issued and the count of token requests (tests read it)."""

    users: Mapping[tuple[str, str], str]  # (domain, user) -> password
    project_id: str | None
    lifetime: float
    wall_clock: Callable[[], float]
    issued: dict[str, float] = field(default_factory=dict)  # token -> wall_clock() expiry
    token_requests: int = 0  # every POST /v3/auth/tokens, refused ones included
    unavailable: bool = False  # answer 503, as IAM in an outage (tests switch it)

    def check(self, token: str) -> bool | None:
        """True for a live issued token, False for an expired or revoked one, None if unknown."""
        expires = self.issued.get(token)
        if expires is None:
            return None
        return self.wall_clock() < expires

    def revoke_all(self) -> None:
        """Make every issued token one that "must be updated" (a password change does so)."""
        for token in self.issued:
            self.issued[token] = float("-inf")


IAM = web.AppKey("iam", IamState)


def setup(app: web.Application, config: SimulatorConfig) -> None:
    """Serve the token call on ``app`` for the users of ``config``."""
    app[IAM] = IamState(
        users=config.iam_users,
        project_id=config.project_id,
        lifetime=config.token_lifetime,
        wall_clock=config.wall_clock,
    )
    app.router.add_post(PATH, _issue_token)


def _error(status: int, title: str, message: str) -> web.Response:
    body = {"error": {"code": status, "message": message, "title": title}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class _BadRequest(Exception):
    pass


def _field(obj: Any, *path: str) -> Any:
    """``obj[path[0]][path[1]]...``, or _BadRequest naming the first missing step."""
    for depth, key in enumerate(path):
        if not isinstance(obj, dict) or key not in obj:
            raise _BadRequest(f"{'.'.join(path[: depth + 1])} is required")
        obj = obj[key]
    return obj


async def _issue_token(request: web.Request) -> web.Response:
    state = request.app[IAM]
    state.token_requests += 1
    if state.unavailable:
        return _error(503, "Service Unavailable", "The service is temporarily unavailable.")
    try:
        body = orjson.loads(await request.read())
        methods = _field(body, "auth", "identity", "methods")
        if not isinstance(methods, list) or "password" not in methods:
            raise _BadRequest('auth.identity.methods must contain "password"')
        user = _field(body, "auth", "identity", "password", "user")
        name, password = _field(user, "name"), _field(user, "password")
        domain = _field(user, "domain", "name")
        project = _field(body, "auth", "scope", "project", "id")
        if not all(isinstance(v, str) for v in (name, password, domain, project)):
            raise _BadRequest("user name, password, domain name and project id must be strings")
    except orjson.JSONDecodeError:
        return _error(400, "Bad Request", "The request body is not valid JSON")
    except _BadRequest as exc:
        return _error(400, "Bad Request", f"Invalid request: {exc}")
    if state.users.get((domain, name)) != password:
        return _error(401, "Unauthorized", "The username or password is wrong.")
    if state.project_id is not None and project != state.project_id:
        return _error(400, "Bad Request", f"The project {project} does not exist")
    now = state.wall_clock()
    token = "MII" + secrets.token_urlsafe(48)
    state.issued[token] = now + state.lifetime
    answer = {
        "token": {
            "methods": ["password"],
            "issued_at": _iso(now),
            "expires_at": _iso(now + state.lifetime),
            "user": {"name": name, "domain": {"name": domain}},
            "project": {"id": project},
        }
    }
    return web.Response(
        status=201,
        body=orjson.dumps(answer),
        content_type="application/json",
        headers={"X-Subject-Token": token},
    )


def _iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    )
