"""Answers written by a middleware before the router ran (401, 429, a timeout's 503).

The router is what names the route of a request (`scope["endpoint"]`), and the request
metrics are labelled by it. A refused request never reaches the router, so it is matched
here, on the refusal path only, to keep its route label instead of `unmatched`.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Receive, Scope, Send


def label_route(scope: Scope) -> None:
    app = scope.get("app")
    if app is None or "endpoint" in scope:
        return
    for route in app.router.routes:
        match, child = route.matches(scope)
        if match is not Match.NONE and "endpoint" in child:
            scope["endpoint"] = child["endpoint"]
            return


async def refuse(response: Response, scope: Scope, receive: Receive, send: Send) -> None:
    """Send `response` for a request the app will not handle, labelled with its route."""
    label_route(scope)
    await response(scope, receive, send)
