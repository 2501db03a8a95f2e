"""The OpenAPI 3.1 description of the API, kept next to the code it describes.

Tests fuzz the live app against this document, so it must list every status code
the handlers can answer.
"""

from __future__ import annotations

from functools import cache
from typing import Any

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {_JSON: {"schema": _ref("Error")}},
    }
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}
        }
    return response


def _ok(description: str, data_schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            _JSON: {
                "schema": {
                    "type": "object",
                    "required": ["message", "data"],
                    "properties": {"message": {"type": "string"}, "data": _ref(data_schema)},
                }
            }
        },
    }


_BAD_ID = _error(
    "The id is not a decimal integer from 1 to 2147483647 written without leading zeros "
    "(invalid_user_id)."
)
# Both exist only when configured (AUTH_TOKEN_FILE, RATE_LIMIT_PER_MINUTE); off by default.
_UNAUTHORIZED = {
    **_error("Authentication is on and no valid bearer token was sent."),
    "headers": {"WWW-Authenticate": {"description": "Bearer.", "schema": {"type": "string"}}},
}
_RATE_LIMITED = _error("Rate limiting is on and this client spent its budget.", retry_after=True)
_MAY_AUTH: list[dict[str, list[str]]] = [{}, {"bearer": []}]
_NOT_FOUND = _error("No such user (never created, or deleted).")
_UNAVAILABLE = _error(
    "`service_unavailable`: MySQL or Redis is unavailable; `overloaded`: they answer, but "
    "this process had no free connection to them in time. Retry later.",
    retry_after=True,
)

_USER_ID = {
    "name": "user_id",
    "in": "path",
    "required": True,
    "description": "Decimal, without leading zeros: /users/01 is refused, not user 1.",
    "schema": {"type": "integer", "minimum": 1, "maximum": 2147483647},
}


@cache
def openapi_document(max_body_bytes: int) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "UserCounter",
            "version": "1.0.0",
            "description": "A counter per registered user. Increments are answered from "
            "Redis and written behind to MySQL. A path with a percent-encoded slash or "
            "backslash (%2F, %5C) is refused on every route with 400 `invalid_path`.",
        },
        "paths": {
            "/api/v1/users": {
                "post": {
                    "operationId": "createUser",
                    "security": _MAY_AUTH,
                    "summary": "Create a user",
                    "requestBody": {
                        "required": True,
                        "content": {_JSON: {"schema": _ref("NewUser")}},
                    },
                    "responses": {
                        "201": {
                            **_ok("Created.", "User"),
                            "headers": {
                                "Location": {
                                    "description": "Path of the new user.",
                                    "schema": {"type": "string"},
                                }
                            },
                        },
                        "400": _error("The body is not a JSON object with a valid username."),
                        "401": _UNAUTHORIZED,
                        "409": _error("The username is taken."),
                        "413": _error(f"The body is larger than {max_body_bytes} bytes."),
                        "415": _error("The body is not declared as application/json."),
                        "429": _RATE_LIMITED,
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/api/v1/users/{user_id}": {
                "parameters": [_USER_ID],
                "get": {
                    "operationId": "getUser",
                    "summary": "A user with its live counter",
                    "responses": {
                        "200": _ok("The user.", "User"),
                        "400": _BAD_ID,
                        "404": _NOT_FOUND,
                        "429": _RATE_LIMITED,
                        "503": _UNAVAILABLE,
                    },
                },
                "delete": {
                    "operationId": "deleteUser",
                    "security": _MAY_AUTH,
                    "summary": "Delete a user; it is never visible again",
                    "responses": {
                        "200": _ok("Deleted.", "Deleted"),
                        "400": _BAD_ID,
                        "401": _UNAUTHORIZED,
                        "404": _NOT_FOUND,
                        "429": _RATE_LIMITED,
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/api/v1/users/{user_id}/count": {
                "parameters": [_USER_ID],
                "get": {
                    "operationId": "getCount",
                    "summary": "The live counter of a user",
                    "responses": {
                        "200": _ok("The counter.", "Count"),
                        "400": _BAD_ID,
                        "404": _NOT_FOUND,
                        "429": _RATE_LIMITED,
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/api/v1/users/{user_id}/increment": {
                "parameters": [_USER_ID],
                "put": {
                    "operationId": "increment",
                    "security": _MAY_AUTH,
                    "summary": "Add one to a user's counter",
                    "description": "With an Idempotency-Key, a retry within 24 h returns "
                    "the first answer and does not count again.",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": "1 to 255 visible ASCII characters (0x21-0x7E), "
                            "no white space inside. Spaces and tabs around the value are "
                            "ignored, so `k` and `k ` are the same key. At most one such "
                            "header: two are refused with 400.",
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 255,
                                "pattern": "^[\\x21-\\x7e]+$",
                            },
                        }
                    ],
                    "responses": {
                        "200": _ok("The new value.", "Count"),
                        "400": _error(
                            "Bad id, or a bad or repeated Idempotency-Key "
                            "(invalid_idempotency_key)."
                        ),
                        "401": _UNAUTHORIZED,
                        "404": _NOT_FOUND,
                        "429": _RATE_LIMITED,
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness: the process answers",
                    "responses": {"200": {"description": "Alive.", "content": {_JSON: {}}}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: MySQL and Redis answer",
                    "responses": {
                        "200": {
                            "description": "Ready (`status: ready`), or `degraded` when only"
                            " MySQL is unreachable: increments and counts of counters in Redis"
                            " still work; `checks` names each store's state.",
                            "content": {_JSON: {}},
                        },
                        "503": _error("Redis is unavailable.", retry_after=True),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1.", "content": {_JSON: {}}}},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Needed by create, increment and delete when the "
                    "deployment sets AUTH_TOKEN_FILE.",
                }
            },
            "schemas": {
                "NewUser": {
                    "type": "object",
                    "required": ["username"],
                    "properties": {
                        "username": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 100,
                            "description": "No control characters, no leading or trailing "
                            "white space; unique (compared as MySQL's collation does).",
                        }
                    },
                },
                "User": {
                    "type": "object",
                    "required": ["id", "username", "counter", "created_at", "updated_at"],
                    "properties": {
                        "id": {"type": "integer", "minimum": 1},
                        "username": {"type": "string"},
                        "counter": {"type": "integer", "minimum": 0},
                        "created_at": {"type": ["string", "null"], "format": "date-time"},
                        "updated_at": {"type": ["string", "null"], "format": "date-time"},
                    },
                },
                "Count": {
                    "type": "object",
                    "required": ["user_id", "counter"],
                    "properties": {
                        "user_id": {"type": "integer", "minimum": 1},
                        "counter": {"type": "integer", "minimum": 0},
                    },
                },
                "Deleted": {
                    "type": "object",
                    "required": ["id"],
                    "properties": {"id": {"type": "integer", "minimum": 1}},
                },
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }
