"""Errors that carry their HTTP answer; one handler renders them all."""

from __future__ import annotations

from collections.abc import Mapping


class ApiError(Exception):
    """An expected failure with the status and detail the client gets."""

    status: int = 500
    default_detail: str = "Internal Server Error"

    def __init__(
        self, detail: str | None = None, *, headers: Mapping[str, str] | None = None
    ) -> None:
        self.detail: str | list[dict[str, object]] = detail or self.default_detail
        self.headers = dict(headers or {})
        super().__init__(str(self.detail))


class Unauthorized(ApiError):
    status = 401
    default_detail = "Invalid signature"


class Forbidden(ApiError):
    status = 403
    default_detail = "Forbidden"


class NotAuthenticated(Forbidden):
    default_detail = "Not authenticated"


class InvalidCredentials(Forbidden):
    default_detail = "Invalid credentials"


class NotFound(ApiError):
    status = 404
    default_detail = "Not found"


class Conflict(ApiError):
    status = 409
    default_detail = "Conflict"


class Gone(ApiError):
    status = 410
    default_detail = "Gone"


class PayloadTooLarge(ApiError):
    status = 413
    default_detail = "Request body is too large"


class BadGateway(ApiError):
    status = 502
    default_detail = "GitHub is unavailable"


class ServiceUnavailable(ApiError):
    status = 503
    default_detail = "Service unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int = 5) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class ValidationFailed(ApiError):
    """422 in the same shape as rororo's request validation errors."""

    status = 422

    def __init__(self, loc: list[str | int], message: str) -> None:
        super().__init__(message)
        self.detail = [{"loc": loc, "message": message}]
