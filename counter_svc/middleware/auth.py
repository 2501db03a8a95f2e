"""Optional bearer-token authentication of the mutating endpoints (create, increment,
delete). Reads stay open. Tokens come from `AUTH_TOKEN_FILE` (a mounted Secret)."""

from __future__ import annotations

import hmac

from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from counter_svc.errors import error_response
from counter_svc.middleware.rejections import find_route, refuse

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SCOPE_PATH = "/api/"


def presented_token(scope: Scope) -> bytes | None:
    """The credentials of `Authorization: Bearer <token>`, or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


class BearerAuth:
    """401 for a mutating `/api/` request without one of the configured tokens.

    Each comparison is constant-time, and every configured token is compared, so the
    answer time tells nothing about how close a guess was or which token matched."""

    def __init__(self, app: ASGIApp, tokens: tuple[str, ...]) -> None:
        self.app = app
        self.tokens = tuple(t.encode() for t in tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in MUTATING
            or not scope["path"].startswith(_SCOPE_PATH)
        ):
            await self.app(scope, receive, send)
            return
        token = presented_token(scope)
        if (token is not None and self._valid(token)) or find_route(scope)[0] is not Match.FULL:
            # An unknown route or a wrong method gets its 404/405 from the router, as
            # without auth: a token cannot change that answer.
            await self.app(scope, receive, send)
            return
        challenge = 'Bearer realm="usercounter"'
        if token is not None:
            challenge += ', error="invalid_token"'
        response = error_response(
            401,
            "unauthorized",
            "this call needs Authorization: Bearer <token>"
            if token is None
            else "the bearer token is not valid",
            {"WWW-Authenticate": challenge},
        )
        await refuse(response, scope, receive, send)

    def _valid(self, token: bytes) -> bool:
        matched = False
        for expected in self.tokens:
            matched |= hmac.compare_digest(token, expected)
        return matched
