"""SQLAlchemy 2.0 tables: tenants, API keys, jobs, artifacts, bulk runs and their files.

PostgreSQL is the record. The migrations in ``jobs/migrations`` create exactly
these tables; a test compares the two.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from jobs.ids import new_id
from jobs.status import JobStatus

STATUS_CHECK = "status IN ({})".format(", ".join(f"'{s.value}'" for s in JobStatus))


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    webhook_secret: Mapped[str] = mapped_column(String(64))  # signs this tenant's webhook bodies (HMAC-SHA256)
    # submission limits; NULL: the deployment's default; 0: none
    jobs_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_active_jobs_per_kind: Mapped[int | None] = mapped_column(Integer)
    share: Mapped[int] = mapped_column(Integer, server_default=text("1"))  # its weight in claims (jobs/fairness.py)
    retention_days: Mapped[int | None] = mapped_column(Integer)  # NULL: the deployment's; 0: forever (jobs/retention)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)  # public part, for lookup
    key_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the whole key
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Batch(Base):
    """A bulk run: its jobs carry ``batch_id``; counts and status are read from them."""

    __tablename__ = "batches"
    __table_args__ = (
        Index("batches_tenant_created", "tenant_id", "created_at", "id"),
        Index("batches_input_file", "input_file_id", postgresql_where=text("input_file_id IS NOT NULL")),
        UniqueConstraint("tenant_id", "idempotency_key", name="batches_tenant_idempotency_key"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str | None] = mapped_column(String(64))  # None when lines name several kinds
    total: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(SmallInteger)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_sha256: Mapped[str | None] = mapped_column(String(64))  # of the validated lines and options
    # a run made through OpenAI's Batch API: its endpoint, input file and result files
    endpoint: Mapped[str | None] = mapped_column(String(64))
    completion_window: Mapped[str | None] = mapped_column(String(16))
    input_file_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    output_file_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    error_file_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))


class File(Base):
    """A file of OpenAI's Files API: an uploaded batch input (its bytes in the artifact store,
    at ``uri``), or a run's output or error file (``batch_id`` and ``part``: no bytes stored,
    its lines are read from the run's jobs)."""

    __tablename__ = "files"
    __table_args__ = (
        Index("files_tenant_created", "tenant_id", "created_at", "id"),
        Index("files_batch", "batch_id", postgresql_where=text("batch_id IS NOT NULL")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(32))  # batch, batch_output
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int | None] = mapped_column(BigInteger)  # a result file's: counted when first asked
    uri: Mapped[str | None] = mapped_column(Text)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    part: Mapped[str | None] = mapped_column(String(8))  # output, error
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(STATUS_CHECK, name="jobs_status_known"),
        UniqueConstraint("tenant_id", "idempotency_key", name="jobs_tenant_idempotency_key"),
        Index("jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("jobs_batch_order", "batch_id", "batch_index", postgresql_where=text("batch_id IS NOT NULL")),
        Index("jobs_queued_fair", "kind", text("priority DESC"), "fair_vt", postgresql_where=text("status = 'queued'")),
        Index(
            "jobs_queued_by_tenant",
            "tenant_id",
            "kind",
            "priority",
            "fair_vt",
            postgresql_where=text("status = 'queued'"),
        ),
        Index("jobs_finished_brin", "finished_at", postgresql_using="brin"),
        Index("jobs_running_lease", "lease_expires_at", postgresql_where=text("status = 'running'")),
        Index("jobs_retry_due", "retry_at", postgresql_where=text("status = 'queued' AND retry_at IS NOT NULL")),
        Index(
            "jobs_tenant_active",
            "tenant_id",
            "kind",
            postgresql_where=text("status IN ('queued', 'running') AND batch_id IS NULL"),
        ),
    )

    # time-ordered ids: rows inserted together share primary-key index pages
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(300))
    profile: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued.value)
    priority: Mapped[int] = mapped_column(SmallInteger, default=5)
    fair_vt: Mapped[float] = mapped_column(Float, server_default=text("0"))  # its place in the queue (jobs/fairness.py)
    input: Mapped[dict[str, Any]] = mapped_column(JSONB)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # attempts that ended without a result: [{attempt, worker, started_at, ended_at, reason}]
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # backoff after a transient error
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    worker: Mapped[str | None] = mapped_column(String(255))
    # no foreign key: the bulk COPY path pays for one per row (see migration 0004)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    batch_index: Mapped[int | None] = mapped_column(Integer)  # line number in the batch, from 1
    custom_id: Mapped[str | None] = mapped_column(String(255))  # the caller's id for a batch item
    webhook_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="artifacts_job_name"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(Text)  # file:///... or s3://bucket/key
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(Base):
    """The outbox: written in the transaction that finishes a job or a batch, sent by the API's
    dispatcher with retries. Exactly one row per finished job or batch that asked for it."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("job_id", name="webhook_deliveries_job"),
        UniqueConstraint("batch_id", name="webhook_deliveries_batch"),
        Index("webhook_deliveries_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
