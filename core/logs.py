"""Log lines that say what they were written for, and one JSON object per line on request.

`bind(request_id=…, operation_id=…, …)` adds fields to every line written inside the block, in
this thread or task (a `ContextVar`, so threads of one worker process keep their own). The
`ContextFilter` copies them onto each record; `JsonFormatter` writes one JSON object per line
with them (`LOG_FORMAT=json`, for Loki and the like); the plain format appends them as
`key=value`. Redaction is the handler's `RedactingFilter`, which runs before either formatter,
on the message and on the traceback alike.

The JSON formatter is ours, not python-json-logger's: that one formats the traceback again
from `exc_info` and would write it unredacted.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

from django.core.signals import request_finished, request_started

#: The fields a line may carry, in the order they are written.
FIELDS = ("request_id", "operation_id", "server_id", "kind", "attempt", "task", "task_id",
          "worker")
_bound: ContextVar[dict[str, Any]] = ContextVar("zlh_log_fields", default={})
_HOST = socket.gethostname()


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add `fields` (None values are left out) to every line logged inside the block."""
    token = _bound.set({**_bound.get(), **{k: str(v) for k, v in fields.items()
                                            if v is not None and k in FIELDS}})
    try:
        yield
    finally:
        _bound.reset(token)


def bound() -> dict[str, Any]:
    return dict(_bound.get())


class ContextFilter(logging.Filter):
    """Puts the bound fields on the record (`record.zlh`), and the worker (host:pid)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # The pid at the time of the line: a prefork worker's children are forked after import.
        record.zlh = {**_bound.get(), "worker": f"{_HOST}:{os.getpid()}"}
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the bound fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "zlh", {})
        line.update({k: fields[k] for k in FIELDS if k in fields})
        if record.exc_text:  # already formatted and redacted by the RedactingFilter
            line["exc"] = record.exc_text
        elif record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class PlainFormatter(logging.Formatter):
    """The human-readable line, with the bound fields (but the worker) as key=value after it."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "zlh", {})
        extra = " ".join(f"{k}={fields[k]}" for k in FIELDS if k in fields and k != "worker")
        if not extra:
            return text
        first, sep, rest = text.partition("\n")
        return f"{first} [{extra}]{sep}{rest}"


def push(**fields: Any) -> Any:
    """Bind `fields` until `pop(token)` (for code that cannot use a `with` block: Celery's
    task_prerun/task_postrun signals)."""
    return _bound.set({**_bound.get(), **{k: str(v) for k, v in fields.items()
                                          if v is not None and k in FIELDS}})


def pop(token: Any) -> None:
    try:
        _bound.reset(token)
    except (ValueError, RuntimeError):  # set in another context: start clean
        _bound.set({})


_REQUEST_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_ENVIRON_KEY = "zlh.request_id"


def _request_started(sender: Any, environ: dict | None = None, **_kwargs: Any) -> None:
    """Bind the request's id from the moment Django takes the request until it is finished,
    so Django's own lines about it (a 404, a 500) carry it too. A caller's `X-Request-ID` (a
    proxy's) is kept when it is a short token of letters, digits and `._-`; anything else is
    replaced, never logged."""
    environ = environ if environ is not None else {}
    given = str(environ.get("HTTP_X_REQUEST_ID", ""))
    if not (0 < len(given) <= 64 and set(given) <= _REQUEST_ID_OK):
        given = uuid.uuid4().hex
    environ[_ENVIRON_KEY] = given
    _bound.set({"request_id": given})


def _request_finished(sender: Any, **_kwargs: Any) -> None:
    _bound.set({})


request_started.connect(_request_started, dispatch_uid="zlh-log-request-started")
request_finished.connect(_request_finished, dispatch_uid="zlh-log-request-finished")


class RequestIdMiddleware:
    """Answers the request's id (bound by `_request_started`) as `X-Request-ID`."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        given = request.META.get(_ENVIRON_KEY)
        if given is None:  # a request Django's handlers did not announce (RequestFactory)
            _request_started(None, request.META)
            given = request.META[_ENVIRON_KEY]
        request.request_id = given
        response = self.get_response(request)
        response["X-Request-ID"] = given
        return response
