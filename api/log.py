"""Logging with the current request's id on every line."""

from __future__ import annotations

import contextvars
import logging
import sys

from aiohttp import web
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
