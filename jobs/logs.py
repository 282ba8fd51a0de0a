"""Logging for every mlq process: text for people, or JSON lines for machines
(``MLQ_LOG_FORMAT=json``), where a job's log line carries its fields.

Code logs a job's fields as ``extra``; the JSON formatter writes those it knows::

    log.info("job %s succeeded", job_id, extra=job_fields(job_id=..., kind=..., tenant=..., attempt=1, duration_s=0.2))
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# a line about one job carries job_id; a line about a claim carries job_ids (and tenant and
# attempt when its jobs share them)
JOB_FIELDS = ("job_id", "job_ids", "kind", "tenant", "attempt", "duration_s", "batch_size", "error_code", "worker")


def job_fields(**fields: Any) -> dict[str, Any]:
    """``extra`` for a log call about a job (unknown names are refused, so typos show)."""
    unknown = set(fields) - set(JOB_FIELDS)
    if unknown:
        raise ValueError(f"not job log fields: {sorted(unknown)}")
    shown = {name: str(value) if name == "job_id" else value for name, value in fields.items()}
    if "job_ids" in shown:
        shown["job_ids"] = [str(i) for i in shown["job_ids"]]
    return shown


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the job's fields, an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(log_format: str, *, level: str | None = None) -> None:
    """The root logger of this process: one handler on stderr in the chosen format."""
    logging.basicConfig(level=(level or os.environ.get("MLQ_LOG_LEVEL", "INFO")).upper(), force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter(log_format))
    for chatty in ("httpx", "alembic"):  # a request and a migration plugin each log a line at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
