"""OpenAPI descriptions of the error responses that routes return, so clients see them all."""

from typing import Any

from pydantic import BaseModel


class ErrorBody(BaseModel):
    detail: str


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: _error("Missing or wrong operator token (Authorization: Bearer <token>)")
}
BAD_BODY: dict[int | str, dict[str, Any]] = {400: _error("The body is not valid JSON")}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _error("No such resource")}
CONFLICT: dict[int | str, dict[str, Any]] = {409: _error("Conflicts with the current state")}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: _error("A service the route needs (broker, database) is unavailable")
}
