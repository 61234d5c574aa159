"""How the HTTP API says no: JSON bodies `{"error": ..., "reason": ...}` and the exception handlers raise for a
malformed request (mapped to 400 by `api.routes`)."""

from __future__ import annotations

from typing import Any

from dynamostore.api.server import Response, json_response

JSON = "application/json"


class BadRequest(Exception):
    """A malformed request: answered 400 with the message as the reason, before anything is touched."""


def error(status: int, err: str, reason: str, **extra: Any) -> Response:
    return json_response({"error": err, "reason": reason, **extra}, status=status)
