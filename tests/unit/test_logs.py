"""JSON log lines carry a job's fields; a typo in a field name is refused."""

import json
import logging
import uuid

import pytest

from jobs.logs import JsonFormatter, job_fields


def test_a_job_log_line_is_one_json_object_with_the_jobs_fields() -> None:
    job_id = uuid.uuid4()
    record = logging.LogRecord("mlq.runner", logging.INFO, __file__, 1, "job %s done", (job_id,), None)
    for name, value in job_fields(job_id=job_id, kind="chat", tenant="acme", attempt=2, duration_s=0.25).items():
        setattr(record, name, value)
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == f"job {job_id} done" and line["level"] == "INFO" and line["logger"] == "mlq.runner"
    assert (line["job_id"], line["kind"], line["tenant"], line["attempt"], line["duration_s"]) == (
        str(job_id), "chat", "acme", 2, 0.25,
    )  # fmt: skip
    assert "error_code" not in line and line["ts"].endswith("+00:00")


def test_unknown_job_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="jobid"):
        job_fields(jobid="x")
