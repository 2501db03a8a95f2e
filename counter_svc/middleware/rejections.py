"""Answers written by a middleware before the router ran (401, 429, a timeout's 503).

The router is what names the route of a request (`scope["endpoint"]`), and the request
metrics are labelled by it. A refused request never reaches the router, so it is matched
here, on the refusal path only, to keep its route label instead of `unmatched`.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Receive, Scope, Send


def find_route(scope: Scope) -> tuple[Match, object | None]:
    """How the app's router will match this request (FULL: path and method; PARTIAL:
    path only, a 405), and the endpoint it names, before the router runs."""
    app = scope.get("app")
    found: tuple[Match, object | None] = (Match.NONE, None)
    for route in app.router.routes if app is not None else ():
        match, child = route.matches(scope)
        if match is Match.FULL:
            return match, child.get("endpoint")
        if match is Match.PARTIAL and found[0] is Match.NONE:
            found = (match, child.get("endpoint"))
    return found


def label_route(scope: Scope) -> None:
    if "endpoint" not in scope:
        _, endpoint = find_route(scope)
        if endpoint is not None:
            scope["endpoint"] = endpoint


async def refuse(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    """Send `response` for a request the app will not handle, labelled with its route."""
    label_route(scope)
    await response(scope, receive, send)
