"""The errors the service answers with, in the OpenAI error shape
(``{"error": {"message", "type", "code"}}``) that OpenAI clients parse."""

from __future__ import annotations

from collections.abc import Mapping


class ApiError(Exception):
    """An HTTP error answer: ``status``, a message for the caller, the OpenAI error
    ``type`` and optional response ``headers`` (``Retry-After``). The app's exception
    handler (:mod:`apps.serve.app`) turns it into the JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}
