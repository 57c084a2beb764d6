"""Errors that reach clients as the spec's `{errcode, error}` bodies with the spec's status codes."""

from __future__ import annotations

from typing import Any


class MatrixError(Exception):
    def __init__(self, code: int, errcode: str, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.code = code
        self.errcode = errcode
        self.msg = msg
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.msg, **self.extra}


def forbidden(msg: str) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", msg)


def not_found(msg: str = "Not found") -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", msg)


def bad_json(msg: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", msg)


def invalid_param(msg: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", msg)


def missing_param(msg: str) -> MatrixError:
    return MatrixError(400, "M_MISSING_PARAM", msg)


def unknown_token(msg: str = "Unrecognised access token", soft_logout: bool = False) -> MatrixError:
    return MatrixError(401, "M_UNKNOWN_TOKEN", msg, soft_logout=soft_logout)


def limit_exceeded(retry_after_ms: int) -> MatrixError:
    return MatrixError(429, "M_LIMIT_EXCEEDED", "Too many requests", retry_after_ms=retry_after_ms)
