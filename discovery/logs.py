"""Logging: one line per event, text or JSON (``DISCOVERY_LOG_FORMAT``), no patient data.

At INFO, WARNING and ERROR no log line holds patient data (Patient ID, Patient Name, Accession
Number): we log run ids, window keys, statuses and counts. DEBUG may: pynetdicom's own loggers
(held at WARNING unless ``DISCOVERY_LOG_LEVEL=DEBUG``) print whole C-FIND identifiers, Celery's
worker logs the first 1024 characters of each task message it runs (a result's message holds
the studies found), and a worker's unexpected error is logged with its traceback, which may
quote values.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("run_id", "window", "status", "rows", "seconds", "state", "attempt"):
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup(level: str = "INFO", fmt: str = "text", stream=sys.stderr) -> None:  # type: ignore[no-untyped-def]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet(level)


def quiet(level: str) -> None:
    """Keep pynetdicom (which logs identifiers at DEBUG) at WARNING unless we debug."""
    for name in ("pynetdicom", "pydicom"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
