"""Settings, one object, read from ``MLQ_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.errors import NotConfigured


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MLQ_", extra="ignore")

    # Unset URLs mean: `mlq standalone` starts the embedded servers under data_dir.
    database_url: str | None = None
    redis_url: str | None = None  # redis://…, or Sentinel's sentinel://:pw@s1:26379;sentinel://:pw@s2:26379/0
    # with a sentinel:// MLQ_REDIS_URL: the name the sentinels monitor the master by (SENTINEL MONITOR
    # <name> ...; "mymaster" is Redis's own example), and the sentinels' own password (their requirepass)
    # when they have one; the URL's password is the master's
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: str | None = None
    data_dir: Path = Path(".mlq")
    artifacts_dir: Path | None = None  # defaults to <data_dir>/artifacts
    models: Path | None = None  # models file (TOML); defaults to the bundled demo profile

    api_host: str = "127.0.0.1"
    api_port: int = 8000

    lease_s: float = 60.0  # a claim's lease; workers renew it every third of it while they run
    requeue_after_s: float = 30.0  # a queued job untouched this long, with its kind's queue empty, is republished
    reconcile_every_s: float = 5.0  # how often the reconciler runs a round
    max_wait_s: float = 60.0  # longest ?wait a client may ask for on GET /v1/jobs/{id}
    openai_wait_s: float | None = None  # how long OpenAI's routes wait for their jobs (504 after); None: max_wait_s
    max_request_bytes: int = 32_000_000  # largest body of POST /v1/jobs (inline base64 files included)
    page_size_max: int = 200  # largest page of GET /v1/jobs
    batch_max_lines: int = 200_000  # lines in one bulk run
    batch_max_bytes: int = 256_000_000  # bytes of one bulk run's JSONL
    batch_max_errors: int = 20  # a refused bulk run lists this many bad lines
    publish_timeout_s: float = 2.0  # give up publishing a wake-up after this; the job stays queued
    db_pool_size: int = 10

    # per-tenant submission limits (429 with Retry-After); a tenant may have its own
    # (`mlq keys limits`); 0 turns a limit off. Bulk-run items count toward neither.
    jobs_per_minute: int = Field(default=6000, ge=0)  # single jobs accepted per tenant per minute
    max_active_jobs_per_kind: int = Field(default=10_000, ge=0)  # a tenant's queued + running single jobs of a kind

    # retention: finished jobs with their artifacts and webhook rows, and bulk runs whose every
    # job finished, are pruned this long after they finished; 0: kept forever. A tenant may have
    # its own (`mlq keys limits --retention-days`). 30: a month of results to fetch and audit.
    retention_days: int = Field(default=30, ge=0)
    prune_every_s: float = Field(default=3600.0, ge=0)  # how often the active reconciler prunes; 0: never
    # jobs deleted per transaction: each holds its row locks for milliseconds, never a table's. A
    # submit that meets a prune's transaction waits about as long as it runs, so small ones keep
    # submit p99 near where it was: python -m bench retention on 2 cores, p99 while pruning over
    # p99 while the prune was stopped, 250 rows x1.96, 100 x1.48, 50 x1.25, 25 x1.22 with every
    # transaction planned afresh; 50 x1.07-1.08 with one plan per prune (jobs/retention.py). 50
    # prunes ~920 jobs a second (3.3 million an hour) with the 0.05 s pause (bench/README.md)
    prune_batch_rows: int = Field(default=50, ge=1)
    prune_pause_s: float = Field(default=0.05, ge=0)  # between a prune's transactions: the hot path goes first

    allow_hosts: list[str] = Field(default_factory=list)  # internal hosts/networks URLs and webhooks may reach
    input_fetch_timeout_s: float = 10.0  # per connect/read of an input given by URL (the whole download: 3x)
    # URL inputs being downloaded at once, per API process: one tenant's more get a 429 at once,
    # so a flood of slow URLs from one tenant holds nothing another tenant needs
    input_fetches_per_tenant: int = Field(default=8, ge=1)
    input_fetches_max: int = Field(default=64, ge=1)  # all tenants together
    webhooks_in_api: bool = True  # the API process sends the webhook outbox
    webhook_timeout_s: float = 5.0  # per connect/read of one delivery attempt
    webhook_max_attempts: int = 8  # then the delivery is marked failed
    webhook_retry_base_s: float = 2.0  # first retry after this; doubles each attempt, with jitter
    webhook_poll_s: float = 1.0  # how often an idle dispatcher looks for due deliveries

    worker_name: str | None = Field(default=None, description="Celery node name of this worker")

    # Prometheus: the API serves /metrics on its own port; a worker and the reconciler serve
    # /metrics on these ports (0: not served). Worker pool processes share a multiprocess
    # directory under data_dir.
    # a worker serving several kinds unloads its least recently used models to keep their weights
    # under this many MiB (GPU memory on a GPU); 0: keep them all
    worker_memory_budget_mb: int = Field(default=0, ge=0)
    # when set, the API's /metrics answers only `Authorization: Bearer <this>` (Prometheus:
    # `authorization: {credentials: ...}`); set it whenever the API port is reachable from outside
    metrics_token: str | None = None
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)
    reconciler_metrics_port: int = Field(default=9102, ge=0, le=65535)
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line (job_id, kind, tenant, ...)
    allow_unpinned_models: bool = False  # let workers load a hub model at a branch (e.g. "main"), not a commit
    standalone: bool = False  # set by `mlq standalone` for its processes: placeholder secrets are allowed

    @property
    def artifacts_path(self) -> Path:
        return self.artifacts_dir or self.data_dir / "artifacts"

    def require_database_url(self) -> str:
        if not self.database_url:
            raise NotConfigured(
                "MLQ_DATABASE_URL is not set: set it (postgresql+psycopg://user@host/db) "
                "or run `mlq standalone`, which starts an embedded PostgreSQL"
            )
        return self.database_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise NotConfigured(
                "MLQ_REDIS_URL is not set: set it (redis://host:6379/0) "
                "or run `mlq standalone`, which starts an embedded Redis"
            )
        return self.redis_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
