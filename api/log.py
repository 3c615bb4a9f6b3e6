"""Logging with the current request's id on every line."""

from __future__ import annotations

import contextvars
import logging
import sys

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_log import AccessLogger

REQUEST_ID_KEY = web.RequestKey("request_id", str)
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar(
    "request_id", default="-"
)

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class UnparsableRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse with its raw header line, which
    may hold a token: keep the message and the error's class, drop the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            message = record.getMessage()
            record.msg = "%s (%s)"
            record.args = (message, type(error).__name__)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class RequestIdAccessLogger(AccessLogger):
    """aiohttp's access log, with the request's id like every other line."""

    def log(
        self, request: web.BaseRequest, response: web.StreamResponse, time: float
    ) -> None:
        token = request_id_var.set(request.get(REQUEST_ID_KEY, "-"))
        try:
            super().log(request, response, time)
        finally:
            request_id_var.reset(token)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Validation failures are client errors, answered with 422 and not worth
    # a traceback in the server log.
    logging.getLogger("rororo").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(UnparsableRequestFilter())
