"""Domain errors and the one table that maps them to the JSON error shape."""

from __future__ import annotations

from typing import ClassVar

import orjson
from starlette.responses import Response


class ApiError(Exception):
    """An error answered to the client as `{"error": code, "message": ...}`."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "invalid_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequest(ApiError):
    status, code = 400, "invalid_request"


class InvalidUserId(ApiError):
    status, code = 400, "invalid_user_id"


class InvalidIdempotencyKey(ApiError):
    status, code = 400, "invalid_idempotency_key"


class UserNotFound(ApiError):
    status, code = 404, "user_not_found"


class UsernameTaken(ApiError):
    status, code = 409, "username_taken"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class Unavailable(ApiError):
    """A backing store is down or too slow; the client may retry after a moment."""

    status, code = 503, "service_unavailable"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, {"Retry-After": str(retry_after)})


class Overloaded(Unavailable):
    """The stores answer, but this process had no free connection to one of them within
    its timeout: every pooled connection was busy with other requests. Not an outage."""

    status, code = 503, "overloaded"
    backend: ClassVar[str] = ""  # the store whose pool was full: the metric's label


# Starlette's own HTTP errors (unknown route, wrong method) in the same shape.
HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    500: "internal_error",
    503: "service_unavailable",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = orjson.dumps({"error": code, "message": message})
    return Response(body, status_code=status, headers=headers, media_type="application/json")
